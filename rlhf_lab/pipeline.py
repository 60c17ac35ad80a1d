"""One experiment: the stages the chosen algorithm consumes, policy optimisation, then evaluation.

The route follows the algorithm. An algorithm declares what it ``consumes`` (``reward``,
``preferences``); a reward component declares what it consumes in turn (a learned reward model needs
the ``reward_model`` artifact, a rule nothing). :meth:`Pipeline.need` builds an artifact by name after
the artifacts it needs, once per run, the way pytest builds a fixture that a test requests:

    base -> sft -> reference                      every run (the start policy and the KL anchor)
    sft -> preferences                            feedback on SFT samples (or a dataset)
    preferences, sft|base -> reward_model         a learned reward model
    reward_model | nothing -> reward              the run-time reward function

So ``algo=dpo`` builds no reward model, ``algo=best_of_n reward=rule`` collects no feedback, and a
plugin algorithm gets the same stages and caching by declaring the same names. Disk artifacts (base,
SFT, preferences, reward model) go through the content-addressed cache (:mod:`rlhf_lab.cache`); the
policy and the evaluation are written into the run directory. ``run(cfg)`` lives apart from the
``@hydra.main`` wrapper so tests can compose a config and call it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.cache import ArtifactCache, artifact_key
from rlhf_lab.config import FIGURE_NAMESPACES, STOP_POINTS, SamplingConfig, check_finite_numbers, check_known_keys, to_object
from rlhf_lab.errors import RlhfLabError, check_weights_finite, nonfinite_figures
from rlhf_lab.plugin_manager import call_hook, get_plugin_manager
from rlhf_lab.resume import InProgressIndex
from rlhf_lab.sharding import consolidated
from rlhf_lab.distributed import Ranks
from rlhf_lab.training import build_loggers, build_trainer, check_global_batches, check_logger, check_trainer_config, checkpoint_dir, close_loggers, inference_device

log = logging.getLogger(__name__)


PATHS_FILE = "paths.json"
"""Written into the run directory: where the run directory, each artifact and the policy are."""


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True)


def _file_digests(config: dict, skip: tuple = ()) -> dict:
    """SHA-256 of every config value that names an existing file, so edited data invalidates the cache.
    ``skip``: keys naming files that are not inputs (a label database, which grows as people label)."""
    digests = {}
    for key, value in config.items():
        if key not in skip and isinstance(value, str) and Path(value).is_file():
            digests[key] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return digests


ROUND_SEED_STRIDE = 1000
"""Seed offset between loop rounds, so each round samples and labels afresh."""


def gold_agreement(records, utility) -> Optional[float]:
    """Share of the records' (better, worse) pairs that the task's hidden utility orders the same way
    (a utility tie counts 1/2): how well a feedback source agrees with the gold annotator; None
    without a single pair (nothing was measured)."""
    agree = total = 0.0
    for record in records:
        utilities = [utility(record.prompt, r) for r in record.responses]
        for better, worse in record.preference_pairs():
            agree += 1.0 if utilities[better] > utilities[worse] else 0.5 if utilities[better] == utilities[worse] else 0.0
            total += 1
    return agree / total if total else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _hydra_job() -> tuple[Optional[Path], Optional[str], list[str]]:
    """(run directory, sweep-group name, command-line overrides) under Hydra, else (None, None, [])."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None, []
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else run_dir.name
    return run_dir, group, list(hc.overrides.task)


def _figures(module, trainer) -> dict[str, float]:
    """The figures a stage logged: this fit's, over those restored with its checkpoint (a stage resumed
    after its last batch logs nothing new)."""
    restored = getattr(module, "resumed_figures", {})
    return {**restored, **{k: float(v) for k, v in trainer.callback_metrics.items()}}


@contextmanager
def _timed(metrics: dict, stage: str):
    """Record the wall time of ``stage`` as ``time/<stage>_seconds`` (cached stages take ~0 s)."""
    start = time.perf_counter()
    yield
    metrics[f"time/{stage}_seconds"] = round(time.perf_counter() - start, 2)
    log.info("%s: %.1f s", stage, metrics[f"time/{stage}_seconds"])


@dataclass
class Artifact:
    """A stage's output in the cache: its directory, its cache key and the figures it produced."""

    path: Path
    key: str
    metrics: dict = field(default_factory=dict)


class Pipeline:
    """The stages of one run, sharing the config, the registry, the cache and the run directory.

    :param overrides: the command-line overrides, to reject settings for stages this run never builds.
    :param worker: this process is a rank > 0 that rank 0 started (``distributed.py``): it joins
        every training stage and builds, writes and evaluates nothing.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, group: str, overrides: list[str] = (), worker: bool = False) -> None:
        self.cfg, self.run_dir, self.group = cfg, Path(run_dir), group
        self.overrides, self.worker = list(overrides), worker
        self.ranks = Ranks.single()
        self.registry = get_plugin_manager().registry
        self.cache = ArtifactCache(Path(cfg.cache_dir))
        self.inprogress = InProgressIndex(Path(cfg.cache_dir))
        check_known_keys(cfg)
        check_finite_numbers(cfg)
        if not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**31:
            raise RlhfLabError(f"seed must be an integer in [0, 2**31), got {cfg.seed}")  # numpy and Lightning take 32 bits
        # Every component is built from its validated dataclass config before any work, so a config
        # error stops the run at once.
        self.task_cfg = self._component_cfg("task")
        self.algo_cfg = self._component_cfg("algo")
        self.model_cfg = to_object(cfg.model, "model")
        self.sft_cfg = to_object(cfg.sft, "sft")
        self.eval_cfg = to_object(cfg.eval, "eval")
        self.loop = to_object(cfg.loop, "loop")
        to_object(cfg.trainer, "trainer")
        self.trainer_plan = check_trainer_config(cfg)
        to_object(cfg.logger, "logger")
        check_logger(cfg)
        self.algo = self.registry.get("algo", self.algo_cfg.name)
        self.consumes = tuple(self.algo.factory.consumes)
        objective = cfg.get("objective")
        if objective is not None and str(objective).split("/", 1)[0] not in FIGURE_NAMESPACES:
            raise RlhfLabError(f"objective={objective} names no figure: a key of metrics.json starts with one of {', '.join(FIGURE_NAMESPACES)}/ (e.g. eval/{cfg.algo.name}/win_rate)")
        self.stop_after = cfg.get("stop_after")
        if self.stop_after not in (None,) + STOP_POINTS:
            raise RlhfLabError(f"stop_after must be one of {list(STOP_POINTS)} or null, got '{self.stop_after}'")
        self.task = self.registry.get("task", self.task_cfg.name).factory(self.task_cfg, cfg.seed)
        self.reward_component = None
        if "reward" in self.consumes or self.stop_after == "reward_model":
            self.reward_cfg = self._component_cfg("reward")
            self.reward_component = self.registry.get("reward", self.reward_cfg.name).factory(self.reward_cfg)
            for attribute in ("consumes", "reward_function"):
                if not hasattr(self.reward_component, attribute):
                    raise RlhfLabError(
                        f"reward '{self.reward_cfg.name}' ({self._dist('reward')}) builds an object without `{attribute}`; "
                        "see the rlhf_lab_register_reward_models hook"
                    )
            if self.stop_after == "reward_model" and "reward_model" not in self.reward_component.consumes:
                raise RlhfLabError(f"stop_after=reward_model: reward={self.reward_cfg.name} has no model to train")
        self.route = self._route()
        self.feedback_source = None
        if self.uses_preferences:
            self.feedback_cfg = self._component_cfg("feedback")
            self.feedback_source = self.registry.get("feedback", self.feedback_cfg.name).factory(self.feedback_cfg, self.task)
        self._check_overrides_are_used(overrides)
        # Candidates for labelling are sampled the way the policy will sample.
        self.candidate_sampling = getattr(self.algo_cfg, "sampling", None) or SamplingConfig()
        self.tokenizer = None
        self.length_counts: dict[str, int] = {}
        self.lora = self.model_cfg.lora if self.model_cfg.lora.r > 0 else None
        self._lora_policy = None  # with LoRA: the policy to train, built beside its reference
        self.length_limits = None  # set when data.truncate cuts demonstrations to fit
        self.timings: dict[str, float] = {}
        self._built: dict[str, object] = {}
        from rlhf_lab.loop import check_loop

        check_loop(self)
        self._check_ranks()
        self.cache.check_writable()

    def _check_ranks(self) -> None:
        """With several processes: every global batch size used divides over them; loops run on one.
        A process another launcher started as one of several ranks (torchrun, srun) is refused: each
        would run the whole pipeline (rank 0 starts the ranks itself, ``distributed.py``)."""
        outside = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if not self.worker and outside > 1:
            raise RlhfLabError(
                f"this process was started as rank {os.environ.get('RANK', '?')} of {outside} by another launcher "
                "(torchrun, srun with several tasks, ...): rlhf_lab starts its own processes; start the command "
                "once, with trainer=ddp or trainer.devices=N trainer.strategy=ddp"
            )
        world = self.trainer_plan.world_size
        if world == 1:
            return
        if self.loop.rounds > 1:
            raise RlhfLabError(f"loop.rounds={self.loop.rounds} runs in one process for now: drop trainer.devices/trainer.strategy or run one round")
        keys = ["algo.batch_size", "algo.rollout_batch_size", "algo.minibatch_size"]
        keys += ["sft.batch_size"] if "sft" in self.route and self.sft_cfg.enabled else []
        keys += ["reward.batch_size"] if "reward_model" in self.route else []
        check_global_batches(self.cfg, world, keys)

    def _component_cfg(self, kind: str):
        if OmegaConf.is_missing(self.cfg, kind) or self.cfg[kind] is None:
            names = ", ".join(c.name for c in self.registry.list(kind))
            raise RlhfLabError(f"no {kind} is selected (the config group '{kind}' was removed or never set): add {kind}=<name>, one of {names}")
        node = self.cfg[kind]
        self.registry.get(kind, node.name)  # unknown name: lists what exists
        return to_object(node, kind)

    def _dist(self, kind: str) -> str:
        """The distribution (and version) providing the selected ``kind``: upgrading a plugin invalidates its artifacts."""
        return self.registry.get(kind, self.cfg[kind].name).distribution

    def _route(self) -> set[str]:
        """Every artifact this run builds: what ``stop_after`` names, or what the algorithm consumes
        and the reference, with everything those need."""
        route: set[str] = set()
        pending = [self.stop_after] if self.stop_after else ["reference", *self.consumes]
        while pending:
            name = pending.pop()
            if name not in route:
                route.add(name)
                pending.extend(self.needs(name))
        return route

    @property
    def uses_preferences(self) -> bool:
        """Whether preference records are collected: the algorithm or the reward model it trains needs them."""
        return "preferences" in self.route

    @property
    def preference_kind(self) -> str:
        """Rankings, or ratings when a pointwise reward model is what consumes the records."""
        kind = getattr(self.reward_component, "feedback_kind", None) if self.reward_component is not None else None
        return kind or "ranking"

    def _check_overrides_are_used(self, overrides: list[str]) -> None:
        """A setting for a group this algorithm never uses would be silently ignored: refuse it."""
        unused = {}
        if self.reward_component is None:
            unused["reward"] = "a reward"
        if not self.uses_preferences:
            unused["feedback"] = "preference feedback"
        for override in overrides:
            group = override.lstrip("+~").split("=", 1)[0].split(".", 1)[0]
            # (algo stays: its sampling settings also draw the candidates that annotators label.)
            if self.stop_after and (group in unused or group == "eval"):
                raise RlhfLabError(
                    f"'{override}': with stop_after={self.stop_after} this run builds only {sorted(self.route)}, "
                    f"so '{group}' is never used. Drop this override."
                )
            if group in unused:
                consumed = ", ".join(self.consumes) or "nothing"
                raise RlhfLabError(
                    f"'{override}': algo={self.algo_cfg.name} does not use {unused[group]} (it consumes: {consumed}"
                    f"{'; the reward ' + self.reward_cfg.name + ' needs no feedback' if group == 'feedback' and self.reward_component else ''}"
                    f"{' (reward.path is a trained model)' if group == 'feedback' and getattr(self, 'reward_cfg', None) is not None and getattr(self.reward_cfg, 'path', None) else ''}). "
                    "Drop this override."
                )

    def _preflight(self, base: Path) -> None:
        """Every prompt, demonstration and dataset preference record against the length limits, before
        any training: stop at the longest offender, or (``data.truncate``) cut and count."""
        from transformers import AutoConfig

        from rlhf_lab.data import encode_response, encode_responses
        from rlhf_lab.lengths import LengthCheck, LengthLimits, model_positions

        positions = model_positions(AutoConfig.from_pretrained(str(base)))
        if positions is None:
            return
        data = to_object(self.cfg.data, "data")
        max_new = max(s.max_new_tokens for s in (self.candidate_sampling, self.eval_cfg.sampling))
        if max_new >= positions:
            raise RlhfLabError(f"max_new_tokens={max_new} (algo.sampling or eval.sampling) leaves no room for a prompt in the model's {positions} positions")
        limits = LengthLimits(positions, max_new, data.max_prompt_tokens, data.max_response_tokens)
        check = LengthCheck(self.tokenizer, limits, data.truncate)
        task, name = self.task, self.task_cfg.name

        def where(prompt: str) -> str:
            return task.sources.get(prompt, f"task '{name}'")

        def fit_prompts(prompts: list[str]) -> list[str]:
            fitted = [check.prompt(p, where(p)) for p in prompts]
            return [p for p in fitted if p is not None]

        def fit_demonstrations(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
            out = []
            for prompt, response in pairs:
                fitted = check.prompt(prompt, where(prompt))
                if fitted is not None:
                    check.response_ids(fitted, encode_response(self.tokenizer, response), where(prompt), "demonstration")
                    out.append((fitted, response))
            return out

        task.train_prompts, task.eval_prompts = fit_prompts(task.train_prompts), fit_prompts(task.eval_prompts)
        if self.sft_cfg.enabled:
            task.sft_train = fit_demonstrations(task.sft_train)
        task.sft_eval = fit_demonstrations(task.sft_eval)
        if self.uses_preferences and not getattr(self.feedback_source, "needs_candidates", True):
            # Records read from files: check them now, not after SFT has been paid for.
            source_path = getattr(self.feedback_cfg, "path", None) or self.feedback_cfg.name
            records = [r for split in ("train", "heldout")
                       for r in self.feedback_source.collect([], [], kind=self.preference_kind, seed=self.cfg.seed, split=split)]
            task_prompts, total = set(task.train_prompts) | set(task.eval_prompts), len(records)
            shared = sum(r.prompt in task_prompts for r in records)
            # One batched call of the fast tokenizer for every text, not one call per text.
            check.encode_prompts([r.prompt for r in records])
            texts = [text for r in records if r.response_ids is None for text in r.responses]
            encoded = iter(encode_responses(self.tokenizer, texts))
            for record in records:
                spot = f"{source_path} ({record.meta.get('source', 'a record')})"
                fitted = check.prompt(record.prompt, spot)
                ids_list = record.response_ids or [next(encoded) for _ in record.responses]
                for ids in ids_list if fitted is not None else ():
                    check.response_ids(fitted, ids, spot, "preference response")
            if total and not shared:
                # The policy trains and is evaluated on the task's prompts, not the file's: say so.
                log.warning(
                    "none of the %d preference records' prompts is a prompt of task '%s': the reward model (or DPO) "
                    "learns from %s, but the policy trains and is evaluated on the task's prompts; "
                    "for the file's own prompts use task=dataset task.path=%s", total, name, source_path, source_path,
                )
        check.raise_if_over()
        self.length_counts = check.log_counts()
        self.length_limits = limits if data.truncate else None

    # --- the resolver -------------------------------------------------------------------------

    def needs(self, name: str) -> tuple[str, ...]:
        """The artifacts that ``name`` is built from."""
        if name == "reward_model":
            if getattr(self.reward_cfg, "path", None):
                return ()
            return ("preferences", "sft" if getattr(self.reward_cfg, "init_from_sft", True) else "base")
        if name == "reward":
            return tuple(self.reward_component.consumes)
        return {"base": (), "sft": ("base",), "reference": ("sft",), "preferences": ("sft",)}[name]

    def need(self, name: str):
        """The artifact ``name``, built once per run after the artifacts it needs (each timed on its own)."""
        if name not in self._built:
            inputs = {dep: self.need(dep) for dep in self.needs(name)}
            with _timed(self.timings, name):
                self._built[name] = getattr(self, f"build_{name}")(**inputs)
        return self._built[name]

    # --- stages -------------------------------------------------------------------------------

    def build_base(self) -> Artifact:
        """Directory of the starting model and tokenizer."""
        from rlhf_lab.models.loading import load_tokenizer

        if self.model_cfg.name_or_path:
            from rlhf_lab.models.loading import model_fingerprint

            artifact = Artifact(Path(self.model_cfg.name_or_path), f"model:{model_fingerprint(self.model_cfg.name_or_path)}")
        else:
            if self.task.build_base_model is None:
                raise RlhfLabError(f"model.name_or_path is required: task '{self.task_cfg.name}' ships no model")
            key = artifact_key("base", {"task": _plain(self.cfg.task), "plugin": self._dist("task"), "seed": self.cfg.seed}, [])

            def build(out: Path) -> dict:
                self.task.build_base_model(out)
                return {}

            artifact = self._cached("base", key, build)
        self.tokenizer = load_tokenizer(str(artifact.path))
        self._check_memory(artifact.path)
        self._preflight(artifact.path)
        return artifact

    def _check_memory(self, base: Path) -> None:
        """Refuse, before any work, a model whose policy stage cannot fit the device even without activations."""
        from rlhf_lab import memory

        parameters, trainable = memory.count_parameters(str(base), self.lora)
        learned_reward = self.reward_component is not None and "reward_model" in self.reward_component.consumes
        est = memory.estimate(
            parameters, trainable, self.model_cfg.dtype, reference=self.lora is None,
            reward_model=learned_reward and "reward" in self.consumes, critic=hasattr(self.algo_cfg, "critic_init"),
            shards=self.trainer_plan.world_size if self._shards_weights() else 1,
        )
        device = inference_device(self.cfg)
        available = memory.device_memory_bytes(device)
        log.info("memory: the policy stage needs at least %.2f GiB of %.1f GiB on %s", est.total / memory.GIB, available / memory.GIB, device)
        if est.total > available:
            raise RlhfLabError(memory.refusal(est, available, device, self.model_cfg.dtype, self.lora is not None))

    def build_sft(self, base: Artifact) -> Artifact:
        """The SFT policy; with ``sft.enabled=false``, the base model itself."""
        from lightning.pytorch import seed_everything

        from rlhf_lab.models.loading import load_policy
        from rlhf_lab.models.lora import add_policy_adapters, enable_gradient_checkpointing
        from rlhf_lab.stages.sft import SFTModule, check_converged, demonstration_loader, tokenize_demonstrations

        config = {
            "sft": _plain(self.cfg.sft), "task": _plain(self.cfg.task), "plugin": self._dist("task"), "data": _plain(self.cfg.data),
            "files": _file_digests(_plain(self.cfg.task)),
            "dtype": self.model_cfg.dtype, "precision": self.cfg.trainer.precision, "seed": self.cfg.seed,
            "lora": _plain(self.cfg.model.lora),
        }
        if not self.sft_cfg.enabled:
            log.info("sft: skipped (sft.enabled=false); start policy and reference: %s", base.path)
            return base
        if not self.task.sft_train:
            raise RlhfLabError(
                f"task '{self.task_cfg.name}' has no demonstrations to fine-tune on (no response column); "
                "give one (task.columns.response=<column>) or start from the given model with sft.enabled=false"
            )
        key = artifact_key("sft", config, [base.key])

        def build(out: Path) -> dict:
            seed_everything(self.cfg.seed, verbose=False)
            c = self.sft_cfg
            examples = self.task.sft_train[: c.max_examples] if c.max_examples else self.task.sft_train
            pad = self.tokenizer.pad_token_id
            limits = self.length_limits
            train = demonstration_loader(tokenize_demonstrations(self.tokenizer, examples, limits), pad, c.batch_size, True, self.cfg.seed)
            val = demonstration_loader(tokenize_demonstrations(self.tokenizer, self.task.sft_eval, limits), pad, 128, False, self.cfg.seed)
            policy = load_policy(str(base.path), self.model_cfg.dtype)
            if self.lora is not None:
                policy = add_policy_adapters(policy, self.lora)
            if self.model_cfg.gradient_checkpointing:
                enable_gradient_checkpointing(policy)
            module = SFTModule(policy, c.lr, c.weight_decay, checkpoint_dir(self.run_dir, "sft"), train, val)
            trainer, resume = self._resumable_trainer("sft", "sft", key, max_epochs=c.epochs)
            try:
                trainer.fit(module, ckpt_path=resume)
            finally:
                close_loggers(trainer.loggers)
            # Sharded (fsdp, ZeRO-3) or trained by DeepSpeed: gathered whole on rank 0, by every rank.
            model = consolidated(module.model, lambda: load_policy(str(base.path), self.model_cfg.dtype), rebuild=self._deepspeed)
            if out is None:
                return {}  # a worker rank: rank 0 checks and saves
            check_weights_finite(model, "sft")
            figures = _figures(module, trainer)
            vocab_size = getattr(policy.config, "vocab_size", None)
            if "sft/val_loss" in figures and vocab_size:
                check_converged(figures["sft/val_loss"], vocab_size, c.lr)
            # With LoRA the SFT policy is saved merged: every later stage loads a plain model.
            (model.merge_and_unload() if self.lora is not None else model).save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            return {k: v for k, v in figures.items() if k.startswith("sft/")}

        return self._cached("sft", key, build, collective=True)

    def _cached(self, stage: str, key: str, build, collective: bool = False) -> Artifact:
        """The artifact ``key`` from the cache, built by ``build(out_dir) -> metrics`` if missing.

        With several processes, rank 0 takes the lock, builds and publishes; it tells the others
        whether it builds, and where the artifact is once published. A ``collective`` build trains
        (all ranks must join its ``Trainer.fit``): the others run it too, with ``out=None``, and
        return after the fit; a build that does not train is rank 0's alone.
        """
        if not self.ranks.is_main:
            if self.ranks.hear(f"start:{stage}:{key}") == "build" and collective:
                build(None)
            path = Path(self.ranks.hear(f"done:{stage}:{key}"))
            return Artifact(path, key, json.loads((path / "metrics.json").read_text()))
        told = []

        def build_told(out: Path) -> dict:
            self.ranks.tell(f"start:{stage}:{key}", "build")
            told.append(True)
            return build(out)

        path, metrics = self.cache.get_or_build(stage, key, build_told)
        if not told:
            self.ranks.tell(f"start:{stage}:{key}", "reused")
        self.ranks.tell(f"done:{stage}:{key}", str(path))
        self.inprogress.clear(stage, key)  # built: its checkpoint is no longer a place to resume from
        return Artifact(path, key, metrics)

    def _resumable_trainer(self, stage: str, artifact: str, key: str, **trainer_kwargs):
        """``(trainer, checkpoint to resume from or None)`` for the training stage ``stage`` of the build
        of ``artifact`` ``key``. Each checkpoint it saves is recorded in the cache's in-progress index, so
        the same command started again (in a new run directory) resumes this build where it stopped."""
        # Every rank resumes from the checkpoint rank 0 chose.
        found = self.ranks.share(f"resume:{stage}:{key}", lambda: str(self.inprogress.checkpoint(artifact, key) or ""))
        resume = Path(found) if found else None
        own = checkpoint_dir(self.run_dir, stage) / "last.ckpt"
        trainer = build_trainer(
            self.cfg, stage, self.run_dir, self.group, on_checkpoint=lambda path: self.inprogress.record(artifact, key, path),
            resuming=resume is not None and resume == own.resolve(), world_size=self.trainer_plan.world_size, **trainer_kwargs,
        )
        if resume is not None:
            log.info("%s: resuming from %s", stage, resume)
        return trainer, (str(resume) if resume is not None else None)

    def build_reference(self, sft: Artifact):
        """The SFT policy, frozen, in memory: the KL anchor of training and evaluation alike.

        With LoRA, the policy to train is built here too (the SFT policy with fresh adapters), and the
        reference is that network with its adapters off: one copy of the base weights for both.
        """
        from rlhf_lab.models.loading import load_policy

        if self.lora is not None:
            from rlhf_lab.models.lora import AdapterDisabled, add_policy_adapters

            policy = load_policy(str(sft.path), self.model_cfg.dtype, key=f"policy {sft.path}")
            self._lora_policy = add_policy_adapters(policy, self.lora).to(inference_device(self.cfg))
            return AdapterDisabled(self._lora_policy)

        model = load_policy(str(sft.path), self.model_cfg.dtype, key=f"reference {sft.path}")
        return model.eval().requires_grad_(False).to(self._frozen_device())

    @property
    def _deepspeed(self) -> bool:
        return self.cfg.trainer.strategy == "deepspeed"

    def _shards_weights(self) -> bool:
        """Whether training holds 1/N of every model per process (FSDP, ZeRO stage 3)."""
        t = self.cfg.trainer
        return t.strategy == "fsdp" or (t.strategy == "deepspeed" and t.zero_stage == 3)

    def _frozen_device(self):
        """Where the frozen reference and reward function wait: the accelerator, or when training shards
        the weights host memory (training shards copies of them; rank 0 moves them to the accelerator to evaluate)."""
        import torch

        return torch.device("cpu") if self._shards_weights() else inference_device(self.cfg)

    def build_preferences(self, sft: Artifact, policy: Optional[Artifact] = None, round_: int = 1, previous: Optional[Artifact] = None) -> Artifact:
        """Preference records for training and held-out accuracy: ``train.jsonl``, ``heldout.jsonl``.

        Candidates sampled from the SFT policy keep their token ids in the records, so whatever trains
        on them (a reward model, DPO) sees exactly the tokens the policy produced. In a later round of
        a loop (``round_ > 1``) the candidates come from ``policy`` and the records of ``previous``
        (every earlier round) come first in the files; the counts describe this round's new records.
        """
        from rlhf_lab.data import decode_response
        from rlhf_lab.feedback.records import read_jsonl, write_jsonl
        from rlhf_lab.models.loading import load_policy
        from rlhf_lab.rollout import sample_responses

        source, kind = self.feedback_source, self.preference_kind
        config = {
            "feedback": _plain(self.cfg.feedback),
            "files": _file_digests(_plain(self.cfg.feedback), skip=getattr(type(self.feedback_cfg), "unhashed_files", ())),
            "sampling": asdict(self.candidate_sampling),
            "kind": kind,
            "plugin": self._dist("feedback"),
            "task": _plain(self.cfg.task),
            "data": _plain(self.cfg.data),
            "seed": self.cfg.seed,
        }
        upstream = [sft.key]
        if round_ > 1:
            config["round"] = round_
            upstream += [policy.key, previous.key]
        key = artifact_key("preferences", config, upstream)
        sampler = policy or sft

        def build(out: Path) -> dict:
            counts = {}
            policy = load_policy(str(sampler.path), self.model_cfg.dtype).to(inference_device(self.cfg)) if source.needs_candidates else None
            for split, prompts in (("train", self.task.train_prompts * getattr(source, "rounds", 1)), ("heldout", self.task.eval_prompts)):
                candidates: list[list[str]] = []
                ids: dict[tuple, list[list[int]]] = {}
                # Independent draws for the two splits (held-out noise must not mirror training noise), and per round.
                seed = self.cfg.seed + ROUND_SEED_STRIDE * (round_ - 1) + (0 if split == "train" else 1)
                if policy is not None:
                    grouped = sample_responses(policy, self.tokenizer, prompts, self.candidate_sampling, samples_per_prompt=source.responses_per_prompt, seed=seed)
                    candidates = [[decode_response(self.tokenizer, r) for r in group] for group in grouped]
                    ids = {(p, tuple(texts)): group for p, texts, group in zip(prompts, candidates, grouped)}
                records = source.collect(prompts if policy is not None else [], candidates, kind=kind, seed=seed, split=split)
                for record in records:
                    if record.response_ids is None:
                        record.response_ids = ids.get((record.prompt, tuple(record.responses)))
                if self.length_limits is not None:
                    records = self._cut_records(records)
                counts[f"feedback/{split}_records"] = len(records)
                counts[f"feedback/{split}_pairs"] = sum(len(r.preference_pairs()) for r in records)
                agreement = gold_agreement(records, self.task.utility) if self.task.utility is not None else None
                if agreement is not None:
                    counts[f"feedback/{split}_gold_agreement"] = agreement
                if previous is not None:
                    records = read_jsonl(previous.path / f"{split}.jsonl") + records
                    counts[f"feedback/{split}_records_total"] = len(records)
                write_jsonl(records, out / f"{split}.jsonl")
            counts.update(getattr(source, "stats", {}))  # e.g. rows a dataset skipped
            return counts

        artifact = self._cached("preferences", key, build)
        log.info("feedback: %s", artifact.metrics)
        return artifact

    def _cut_records(self, records: list) -> list:
        """Records cut to the length limits (``data.truncate``; the pre-flight pass counted the cuts)."""
        from rlhf_lab.data import record_response_ids
        from rlhf_lab.lengths import LengthCheck

        check, out = LengthCheck(self.tokenizer, self.length_limits, truncate=True), []
        for record in records:
            prompt = check.prompt(record.prompt, "")
            if prompt is not None:
                record.response_ids = [check.response_ids(prompt, ids, "", "") for ids in record_response_ids(self.tokenizer, record)]
                record.prompt = prompt
                out.append(record)
        return out

    def build_reward_model(self, preferences: Optional[Artifact] = None, sft: Optional[Artifact] = None, base: Optional[Artifact] = None, stage: str = "reward") -> Artifact:
        """The trained reward model (or the one ``reward.path`` names)."""
        from lightning.pytorch import seed_everything

        if getattr(self.reward_cfg, "path", None):
            from rlhf_lab.models.loading import model_fingerprint, resolve_model_path

            path = resolve_model_path(self.reward_cfg.path, "reward.path")
            return Artifact(Path(path), f"model:{model_fingerprint(path)}")

        from rlhf_lab.feedback.records import read_jsonl
        from rlhf_lab.models.loading import load_value_model
        from rlhf_lab.models.lora import add_value_adapters, merge_value_adapters
        from rlhf_lab.models.value_model import RewardNormaliser
        from rlhf_lab.stages.reward import RewardModule, record_loader, score_records, shares_prompt

        init = sft or base
        objective = self.reward_component
        config = {
            "reward": _plain(self.cfg.reward), "plugin": self._dist("reward"), "lora": _plain(self.cfg.model.lora),
            "dtype": self.model_cfg.dtype, "precision": self.cfg.trainer.precision, "seed": self.cfg.seed,
        }
        key = artifact_key("reward_model", config, [preferences.key, init.key])

        def build(out: Path) -> dict:
            seed_everything(self.cfg.seed, verbose=False)
            c = self.reward_cfg
            train, heldout = read_jsonl(preferences.path / "train.jsonl"), read_jsonl(preferences.path / "heldout.jsonl")
            model = load_value_model(str(init.path), self.model_cfg.dtype)
            if self.lora is not None:
                add_value_adapters(model, self.lora)
            share = shares_prompt(objective, model)
            module = RewardModule(
                model, objective, c.lr, c.weight_decay, checkpoint_dir(self.run_dir, stage),
                record_loader(train, objective, self.tokenizer, c.batch_size, True, self.cfg.seed, share),
                record_loader(heldout, objective, self.tokenizer, 64, False, self.cfg.seed, share),
            )
            trainer, resume = self._resumable_trainer(stage, "reward_model", key, max_epochs=c.epochs)
            try:
                trainer.fit(module, ckpt_path=resume)
            finally:
                close_loggers(trainer.loggers)
            model = consolidated(model, lambda: load_value_model(str(init.path), self.model_cfg.dtype), rebuild=self._deepspeed)
            if out is None:
                return {}  # a worker rank: rank 0 checks, normalises and saves
            check_weights_finite(model, stage)
            # Normalise on the SFT policy's samples: the training candidates are exactly those.
            normaliser = RewardNormaliser.fit(score_records(model.to(inference_device(self.cfg)), self.tokenizer, train))
            if self.lora is not None:
                merge_value_adapters(model)  # saved as a plain model
            # Plain transformers pools at the last non-pad token: it needs the pad id in the config.
            model.model.config.pad_token_id = self.tokenizer.pad_token_id
            model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            normaliser.save(out)
            metrics = {k: v for k, v in _figures(module, trainer).items() if k.startswith("reward/")}
            metrics.update({"reward/normaliser_mean": normaliser.mean, "reward/normaliser_std": normaliser.std})
            return metrics

        return self._cached("reward_model", key, build, collective=True)

    def build_reward(self, **inputs):
        """The run-time reward function, frozen, on the inference device."""
        return self.reward_component.reward_function(inputs, self.tokenizer, self.model_cfg.dtype).to(self._frozen_device())

    def round_reward(self, preferences: Artifact, round_: int):
        """(reward model artifact or None, reward function or None) of a loop round: round 1's are the
        run's own; a later round retrains the reward model on ``preferences`` (every record so far)."""
        if "reward" not in self.consumes:
            return None, None
        learned = "reward_model" in self.reward_component.consumes
        if round_ == 1:
            return (self.need("reward_model") if learned else None), self.need("reward")
        init = "sft" if getattr(self.reward_cfg, "init_from_sft", True) else "base"
        model = self.build_reward_model(preferences=preferences, stage=f"reward_round{round_}", **{init: self.need(init)})
        reward = self.reward_component.reward_function({"reward_model": model}, self.tokenizer, self.model_cfg.dtype)
        return model, reward.to(inference_device(self.cfg))

    def train_policy(self, start: Artifact, reward, reward_model: Optional[Artifact], preferences: Optional[Artifact], round_: int) -> Artifact:
        """The policy of a loop round, trained from ``start`` and cached (a restarted loop resumes after it)."""
        import lightning.pytorch as pl

        from rlhf_lab.algos.inputs import AlgoInputs

        stage = "policy" if round_ == 1 else f"policy_round{round_}"
        key = self._policy_key(start, reward is not None, reward_model, preferences, round_)

        def build(out: Path) -> dict:
            inputs = AlgoInputs(
                sft=start.path, reference=self.need("reference"), tokenizer=self.tokenizer, prompts=self.task.train_prompts,
                seed=self.cfg.seed, dtype=self.model_cfg.dtype, checkpoint_dir=checkpoint_dir(self.run_dir, stage),
                gradient_checkpointing=self.model_cfg.gradient_checkpointing,
                reward=reward if "reward" in self.consumes else None,
                preferences=preferences.path if "preferences" in self.consumes else None,
            )
            module, _ = self._fit_algorithm(inputs, stage, seed=self.cfg.seed + round_ - 1, key=key)
            if not isinstance(module, pl.LightningModule):
                raise RlhfLabError(f"loop: algo={self.algo_cfg.name} returned no trainable module")
            module.policy.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
            return {}

        with _timed(self.timings, stage):
            return self._cached("policy", key, build)

    def evaluate(self, handle, device, reward_fn, stage: str = "eval") -> tuple[dict, list]:
        """A policy handle against the SFT policy on the held-out prompts; the figures also go to the
        loggers of their own ``stage`` (``csv/eval/``, a wandb run of job type eval with the samples)."""
        from rlhf_lab.policy import ModelPolicy
        from rlhf_lab.stages.evaluate import evaluate_policies

        reference = ModelPolicy(self.need("reference").to(device), self.tokenizer)
        with _timed(self.timings, "evaluate" if stage == "eval" else stage):
            eval_metrics, samples = evaluate_policies(
                {"sft": reference, self.algo_cfg.name: handle}, reference, reward_fn,
                self.tokenizer, self.task, self.eval_cfg, self.cfg.seed, limits=self.length_limits,
            )
        eval_loggers = build_loggers(self.cfg, stage, self.run_dir, self.group)
        columns = list(dict.fromkeys(c for s in samples for c in s))
        for logger in eval_loggers:
            logger.log_metrics(eval_metrics, step=0)
            if hasattr(logger, "log_table") and samples:  # wandb: every policy's responses, side by side
                logger.log_table(key=f"{stage}/samples", columns=columns, data=[[s.get(c) for c in columns] for s in samples], step=0)
        close_loggers(eval_loggers)
        return eval_metrics, samples

    def _policy_key(self, start: Artifact, uses_reward: bool, reward_model: Optional[Artifact], preferences: Optional[Artifact], round_: int) -> str:
        """The key of a trained policy: a loop round's cached artifact, and the in-progress index entry
        through which an interrupted policy stage resumes."""
        config = {
            "algo": _plain(self.cfg.algo), "plugin": self._dist("algo"), "reward": _plain(self.cfg.reward) if uses_reward else None,
            "dtype": self.model_cfg.dtype, "precision": self.cfg.trainer.precision, "seed": self.cfg.seed, "round": round_,
            "prompts": hashlib.sha256(json.dumps(self.task.train_prompts).encode()).hexdigest(), "lora": _plain(self.cfg.model.lora),
        }
        upstream = [start.key] + ([reward_model.key] if reward_model is not None else [])
        upstream += [preferences.key] if "preferences" in self.consumes and preferences is not None else []
        return artifact_key("policy", config, upstream)

    def _fit_algorithm(self, inputs, stage: str, seed: int, key: str):
        """The algorithm built from ``inputs`` and, if it is a Lightning module, fitted by one Trainer
        (resumed from the checkpoint of an interrupted build of the policy ``key``).

        :returns: ``(module or policy handle, trainer or None)``.
        """
        import lightning.pytorch as pl
        from lightning.pytorch import seed_everything

        seed_everything(seed, verbose=False)
        result = self.algo.factory(self.algo_cfg, inputs)
        if not isinstance(result, pl.LightningModule):
            return result, None
        trainer, resume = self._resumable_trainer(stage, "policy", key, max_epochs=getattr(result, "max_epochs", 1))
        try:
            trainer.fit(result, ckpt_path=resume)
        finally:
            close_loggers(trainer.loggers)
        if hasattr(result, "policy"):
            check_weights_finite(result.policy, stage)
        return result, trainer

    def optimise(self):
        """Build the algorithm from what it consumes; train it if it is a Lightning module.

        :returns: ``(policy handle, device it is on)``.
        """
        from rlhf_lab.algos.inputs import AlgoInputs

        sft = self.need("sft")
        inputs = AlgoInputs(
            sft=sft.path, reference=self.need("reference"), tokenizer=self.tokenizer, prompts=self.task.train_prompts,
            seed=self.cfg.seed, dtype=self.model_cfg.dtype, checkpoint_dir=checkpoint_dir(self.run_dir, "policy"),
            policy=self._lora_policy, lora=self.lora, gradient_checkpointing=self.model_cfg.gradient_checkpointing,
            **{name: self.need(name) for name in self.consumes if name == "reward"},
            **{name: self.need(name).path for name in self.consumes if name == "preferences"},
        )
        reward_model = self._built.get("reward_model") if "reward" in self.consumes else None
        key = self._policy_key(sft, "reward" in self.consumes, reward_model if isinstance(reward_model, Artifact) else None,
                               self._built.get("preferences"), 1)
        with _timed(self.timings, "policy"):
            result, trainer = self._fit_algorithm(inputs, "policy", seed=self.cfg.seed, key=key)
            if trainer is None:
                return result, inference_device(self.cfg)  # a policy that trains nothing (best-of-n)
            policy = consolidated(result.policy, inputs.load_policy, rebuild=self._deepspeed)
            if not self.ranks.is_main:
                return None, trainer.strategy.root_device  # rank 0 saves and evaluates
            result.policy = policy
            # Into a fresh directory, then renamed: no stale shards of an earlier run mix in.
            out, tmp = self.run_dir / "policy", self.run_dir / ".policy.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            result.policy.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
            self.inprogress.clear("policy", key)
        # Lightning hands the module back on the CPU after fit; evaluate where the trainer ran.
        device = trainer.strategy.root_device
        result.policy.to(device)
        return result.policy_handle(), device

    # --- the whole run ------------------------------------------------------------------------

    def run(self) -> dict:
        """Build what the run needs, train, evaluate, write the outputs; the run directory is claimed
        for the whole run (a second run into it stops at once, ``run_lock.py``). With several
        processes, rank 0 starts the others here and ends them when the run ends."""
        from rlhf_lab.run_lock import RunDirLock

        if self.worker:
            self.ranks = Ranks.join(self.trainer_plan.device_type)
            try:
                return self._run()
            finally:
                self.ranks.close()
        with RunDirLock(self.run_dir):
            if self.trainer_plan.world_size == 1:
                return self._run()
            return self._run_ranks()

    def _run_ranks(self) -> dict:
        """Rank 0 of a multi-process run: the workers get the composed config, not the command line."""
        config = copy.deepcopy(self.cfg)
        OmegaConf.resolve(config)  # interpolations that only rank 0 can resolve (Hydra's) resolved here
        spec = {"config": config, "run_dir": str(self.run_dir.resolve()), "group": self.group, "overrides": self.overrides}
        self.ranks = Ranks.launch(self.trainer_plan.world_size, self.trainer_plan.device_type, spec, self.run_dir)
        try:
            metrics = self._run()
        except BaseException as exc:
            failure = self.ranks.worker_failure(wait=5.0)
            self.ranks.close(failed=True)
            if failure is not None:
                raise RlhfLabError(failure) from exc
            raise
        failure = self.ranks.close()
        if failure is not None:
            log.warning("the run's outputs are complete, but %s", failure)
        return metrics

    def _run(self) -> dict:
        if self.cfg.logger.name == "wandb":
            log.info("wandb group: %s", self.group)
        started = time.perf_counter()
        if self.stop_after:
            self.need(self.stop_after)
            if not self.ranks.is_main:
                return {}
            metrics = self._artifact_metrics()
            metrics.update(self.timings)
            metrics["time/total_seconds"] = round(time.perf_counter() - started, 2)
            self._write_metrics(metrics)
            self._write_paths()
            return metrics
        handle = None
        if self.loop.rounds > 1:
            from rlhf_lab.loop import run_rounds

            eval_metrics, samples, policy = run_rounds(self)
            metrics = self._artifact_metrics()
            self._publish_policy(policy.path)
        else:
            handle, device = self.optimise()
            if not self.ranks.is_main:
                return {}  # rank 0 evaluates and writes the outputs
            metrics = self._artifact_metrics()
            eval_metrics, samples = self.evaluate(handle, device, self._built.get("reward"))
        metrics.update(eval_metrics)
        metrics.update(self.timings)
        metrics["time/total_seconds"] = round(time.perf_counter() - started, 2)

        if self.lora is not None and self.lora.merge and handle is not None and handle.model is not None:
            from rlhf_lab.models.lora import merged_copy

            merged = merged_copy(handle.model)
            merged.save_pretrained(self.run_dir / "policy_merged")
            self.tokenizer.save_pretrained(self.run_dir / "policy_merged")
        _write_atomic(self.run_dir / "samples.jsonl", "".join(json.dumps(sample) + "\n" for sample in samples))
        self._write_paths()
        self._write_metrics(metrics)
        call_hook("rlhf_lab_run_finished", cfg=self.cfg, metrics=metrics, run_dir=self.run_dir)
        return metrics

    def _write_metrics(self, metrics: dict) -> None:
        """``metrics.json``, only if every figure is a finite number: a NaN or infinite figure fails the
        run, naming the figures (they go to ``metrics.nonfinite.json``, the other outputs stay)."""
        bad = nonfinite_figures(metrics)
        if bad:
            _write_atomic(self.run_dir / "metrics.nonfinite.json", json.dumps({k: str(v) for k, v in metrics.items()}, indent=2, sort_keys=True) + "\n")
            raise RlhfLabError(
                f"the run produced {len(bad)} figure(s) that are not finite numbers: {', '.join(bad[:8])}; no metrics.json was written "
                f"(every figure is in {self.run_dir / 'metrics.nonfinite.json'}; the policy and samples are kept in {self.run_dir})"
            )
        _write_atomic(self.run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    def _publish_policy(self, path: Path) -> None:
        """The last round's cached policy, copied to ``<run dir>/policy`` (fresh directory, then renamed)."""
        out, tmp = self.run_dir / "policy", self.run_dir / ".policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(path, tmp, ignore=shutil.ignore_patterns("metrics.json", "ARTIFACT_COMPLETE"))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)

    def _artifact_metrics(self) -> dict:
        metrics = {**self.task.stats, **self.length_counts}
        for artifact in self._built.values():
            if isinstance(artifact, Artifact):
                metrics.update(artifact.metrics)
        return metrics

    def artifact_paths(self) -> dict[str, str]:
        """Where this run's outputs are: the run directory, every disk artifact built, the policy."""
        paths = {"run_dir": str(self.run_dir.resolve())}
        for name in ("sft", "preferences", "reward_model"):
            if isinstance(self._built.get(name), Artifact):
                paths[name] = str(Path(self._built[name].path).resolve())
        for name in ("policy", "policy_merged"):
            if (self.run_dir / name).is_dir():
                paths[name] = str((self.run_dir / name).resolve())
        return paths

    def _write_paths(self) -> None:
        """``paths.json`` in the run directory, and the same lines in the log: the next command takes them."""
        paths = self.artifact_paths()
        _write_atomic(self.run_dir / PATHS_FILE, json.dumps(paths, indent=2) + "\n")
        for name, path in paths.items():
            log.info("%s: %s", name, path)


def run(cfg: DictConfig, run_dir: Optional[Path] = None) -> dict:
    """Run one experiment and return its metrics (also written to ``<run_dir>/metrics.json``)."""
    hydra_dir, group, overrides = _hydra_job()
    run_dir = Path(run_dir or hydra_dir or "outputs/run")
    group = cfg.logger.group or group or run_dir.name
    return Pipeline(cfg, run_dir, group, overrides).run()
