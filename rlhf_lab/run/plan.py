"""The plan of a run: which stages it builds, and every refusal the config alone decides, before any
torch work.

:func:`make_plan` validates the config (unknown keys, non-finite numbers, each group's dataclass
checks), looks up the selected components, picks the builder of each artifact
(:func:`rlhf_lab.run.builders.choose`) and derives the route from the builders' signatures
(:func:`rlhf_lab.run.resolver.route`). What depends on the machine (the trainer's devices, memory,
lengths) is the pre-flight's (:mod:`rlhf_lab.run.preflight`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.config import FIGURE_NAMESPACES, STOP_POINTS, SamplingConfig, check_finite_numbers, check_known_keys, to_object
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.loggers import check_logger
from rlhf_lab.plugin_manager import Component, Registry
from rlhf_lab.run import builders
from rlhf_lab.run.resolver import route


@dataclass(frozen=True)
class Plan:
    """What one run does, decided from its config.

    :param cfg: the composed config.
    :param settings: each group's validated dataclass (``task``, ``algo``, ``model``, ``sft``, ``data``,
        ``eval``, ``loop``; ``reward`` and ``feedback`` only where the route uses them).
    :param components: the registered component of each selected kind (``task``, ``algo``; ``reward``,
        ``feedback`` where used).
    :param builders: which function builds each artifact on the route.
    :param route: the artifacts this run builds, each after those it needs.
    :param in_sweep: a job of a multirun: an override this job does not use is ignored (and listed in
        ``ignored``) rather than refused, so one sweep can cross algorithms that read different groups.
    :param ignored: the overrides this job ignores, each with why (``in_sweep`` only).
    """

    cfg: DictConfig
    overrides: tuple[str, ...]
    settings: Mapping[str, Any]
    components: Mapping[str, Component]
    builders: Mapping[str, Callable]
    route: tuple[str, ...]
    in_sweep: bool = False
    ignored: tuple[tuple[str, str], ...] = ()

    @property
    def algo_name(self) -> str:
        return self.settings["algo"].name

    @property
    def consumes(self) -> tuple[str, ...]:
        """What the algorithm consumes besides the SFT policy and the reference."""
        return self.components["algo"].traits["consumes"]

    @property
    def stop_after(self) -> Optional[str]:
        return self.cfg.get("stop_after")

    @property
    def uses_preferences(self) -> bool:
        """Whether preference records are collected: the algorithm or the reward model it trains needs them."""
        return "preferences" in self.route

    @property
    def learned_reward(self) -> bool:
        """Whether the reward component is a model the run trains (or loads), not a rule."""
        return "reward" in self.components and "reward_model" in self.components["reward"].traits["consumes"]

    @property
    def reward_models_held(self) -> int:
        """Learned reward models the policy stage holds: the ensemble's members (``reward.ensemble_size``),
        one, or none (a rule, or an algorithm that consumes no reward)."""
        if not (self.learned_reward and "reward" in self.consumes):
            return 0
        return getattr(self.settings["reward"], "ensemble_size", 1)

    @property
    def preference_kind(self) -> str:
        """Rankings, or ratings when a pointwise reward model is what consumes the records."""
        kind = self.components["reward"].traits["feedback_kind"] if "reward" in self.components else None
        return kind or "ranking"

    @property
    def candidate_sampling(self) -> SamplingConfig:
        """How candidates for labelling are sampled: the way the policy will sample."""
        return getattr(self.settings["algo"], "sampling", None) or SamplingConfig()

    @property
    def lora(self):
        """``model.lora`` when adapters are on, else None."""
        lora = self.settings["model"].lora
        return lora if lora.r > 0 else None

    @property
    def deepspeed(self) -> bool:
        return self.cfg.trainer.strategy == "deepspeed"

    @property
    def shards_weights(self) -> bool:
        """Whether training holds 1/N of every model per process (FSDP, ZeRO stage 3)."""
        trainer = self.cfg.trainer
        return trainer.strategy == "fsdp" or (trainer.strategy == "deepspeed" and trainer.zero_stage == 3)

    def distribution(self, kind: str) -> str:
        """The distribution (and version) providing the selected ``kind``: upgrading a plugin invalidates its artifacts."""
        return self.components[kind].distribution

    def section(self, group: str) -> dict:
        """The config group ``group`` as a plain dict (interpolations resolved), for cache keys."""
        return OmegaConf.to_container(self.cfg[group], resolve=True)


def make_plan(cfg: DictConfig, registry: Registry, overrides: tuple[str, ...] = (), in_sweep: bool = False) -> Plan:
    """The plan of the run ``cfg`` describes, or the first refusal (an :class:`RlhfLabError`); in a sweep
    (``in_sweep``) overrides the job does not use are listed in ``Plan.ignored`` instead of refused."""
    _check_values(cfg)
    settings = {"task": _component_settings(cfg, registry, "task"), "algo": _component_settings(cfg, registry, "algo")}
    for group in ("model", "sft", "eval", "loop", "data"):
        settings[group] = to_object(cfg[group], group)
    to_object(cfg.trainer, "trainer")
    to_object(cfg.logger, "logger")
    check_logger(cfg)
    components = {kind: registry.get(kind, settings[kind].name) for kind in ("task", "algo")}
    stop_after = cfg.get("stop_after")
    if "reward" in components["algo"].traits["consumes"] or stop_after == "reward_model":
        settings["reward"] = _component_settings(cfg, registry, "reward")
        components["reward"] = registry.get("reward", settings["reward"].name)
        if stop_after == "reward_model" and "reward_model" not in components["reward"].traits["consumes"]:
            raise RlhfLabError(f"stop_after=reward_model: reward={settings['reward'].name} has no model to train")
    chosen = builders.choose(settings, components)
    targets = [stop_after] if stop_after else ["sft", "reference", *components["algo"].traits["consumes"]]
    stages = route(chosen, targets)
    if "preferences" in stages:
        settings["feedback"] = _component_settings(cfg, registry, "feedback")
        components["feedback"] = registry.get("feedback", settings["feedback"].name)
    plan = Plan(cfg, tuple(overrides), settings, components, {name: chosen[name] for name in stages}, stages, in_sweep)
    unused = _unused_overrides(plan)
    if unused and not in_sweep:
        raise RlhfLabError(f"'{unused[0][0]}': {unused[0][1]}. Drop this override.")
    plan = replace(plan, ignored=tuple(unused))
    _check_loop(plan)
    _check_selection(plan)
    return plan


def _check_values(cfg: DictConfig) -> None:
    """Keys no schema has, non-finite numbers, the seed range, ``objective`` and ``stop_after``."""
    check_known_keys(cfg)
    check_finite_numbers(cfg)
    if not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**31:
        raise RlhfLabError(f"seed must be an integer in [0, 2**31), got {cfg.seed}")  # numpy and Lightning take 32 bits
    objective = cfg.get("objective")
    if objective is not None and str(objective).split("/", 1)[0] not in FIGURE_NAMESPACES:
        raise RlhfLabError(
            f"objective={objective} names no figure: a key of metrics.json starts with one of {', '.join(FIGURE_NAMESPACES)}/ "
            f"(e.g. eval/{cfg.algo.name}/win_rate)"
        )
    if cfg.get("stop_after") not in (None,) + STOP_POINTS:
        raise RlhfLabError(f"stop_after must be one of {list(STOP_POINTS)} or null, got '{cfg.get('stop_after')}'")


def _component_settings(cfg: DictConfig, registry: Registry, kind: str):
    """The validated dataclass of the component group ``kind``; a missing group or unknown name is refused."""
    if OmegaConf.is_missing(cfg, kind) or cfg[kind] is None:
        names = ", ".join(c.name for c in registry.list(kind))
        raise RlhfLabError(f"no {kind} is selected (the config group '{kind}' was removed or never set): add {kind}=<name>, one of {names}")
    registry.get(kind, cfg[kind].name)  # unknown name: lists what exists
    return to_object(cfg[kind], kind)


def _unused_overrides(plan: Plan) -> list[tuple[str, str]]:
    """The overrides of groups this run never uses, each with why: a single run refuses the first (it
    would be silently ignored); a sweep's job ignores them and says so."""
    found, unused = [], {}
    if "reward" not in plan.components:
        unused["reward"] = "a reward"
    if not plan.uses_preferences:
        unused["feedback"] = "preference feedback"
    for override in plan.overrides:
        group = override.lstrip("+~").split("=", 1)[0].split(".", 1)[0]
        # (algo stays: its sampling settings also draw the candidates that annotators label.)
        if plan.stop_after and (group in unused or group == "eval"):
            found.append((override, f"with stop_after={plan.stop_after} this run builds only {sorted(plan.route)}, so '{group}' is never used"))
        elif group in unused:
            found.append((override, f"algo={plan.algo_name} does not use {unused[group]} ({_why_unused(plan, group)})"))
    return found


def _why_unused(plan: Plan, group: str) -> str:
    """What the algorithm consumes, and why the reward it uses needs no feedback."""
    why = f"it consumes: {', '.join(plan.consumes) or 'nothing'}"
    reward = plan.settings.get("reward")
    if group == "feedback" and reward is not None:
        why += f"; the reward {reward.name} needs no feedback"
        if getattr(reward, "path", None):
            why += " (reward.path is a trained model)"
    return why


def _check_selection(plan: Plan) -> None:
    """Refuse active selection (``feedback.selection``) where nothing can choose: it ranks candidates by
    the disagreement of the run's reward-model ensemble, a Bradley-Terry one of two or more members."""
    rule = getattr(plan.settings.get("feedback"), "selection", "random")
    if rule == "random" or not plan.uses_preferences:
        return
    reward = plan.settings.get("reward")
    if not (plan.learned_reward and "reward" in plan.consumes) or getattr(reward, "path", None):
        raise RlhfLabError(f"feedback.selection={rule} chooses comparisons by a reward-model ensemble that this run trains; "
                           f"algo={plan.algo_name} with this reward trains none (use a learned reward, or feedback.selection=random)")
    if plan.preference_kind != "ranking":
        raise RlhfLabError(f"feedback.selection={rule} scores Bradley-Terry comparisons; reward={reward.name} trains on ratings (use reward=pairwise)")
    if getattr(reward, "ensemble_size", 1) < 2:
        raise RlhfLabError(f"feedback.selection={rule} needs the disagreement of an ensemble: set reward.ensemble_size >= 2")


def _check_loop(plan: Plan) -> None:
    """Refuse a loop (``loop.rounds > 1``) the run cannot do."""
    rounds = plan.settings["loop"].rounds
    if rounds == 1:
        return
    if plan.stop_after:
        raise RlhfLabError(f"loop.rounds={rounds} runs whole rounds; it cannot be combined with stop_after={plan.stop_after}")
    if not plan.uses_preferences:
        raise RlhfLabError(
            f"loop.rounds={rounds}: algo={plan.algo_name} with this reward collects no feedback, so there is nothing "
            "to repeat (a rule reward or reward.path needs none). Use a learned reward model or an algorithm that consumes preferences."
        )
    if not plan.components["feedback"].traits["needs_candidates"]:
        raise RlhfLabError(
            f"loop.rounds={rounds}: feedback={plan.settings['feedback'].name} reads fixed records and labels nothing the policy "
            "samples; a loop needs a source that labels candidates (simulated, human, ai_judge)"
        )
    if not plan.components["algo"].traits["trains_policy"]:
        raise RlhfLabError(f"loop.rounds={rounds}: algo={plan.algo_name} trains no policy, so later rounds would sample what the first did")
    if plan.lora is not None:
        raise RlhfLabError(f"loop.rounds={rounds} with model.lora is not supported yet: set model.lora.r=0")
