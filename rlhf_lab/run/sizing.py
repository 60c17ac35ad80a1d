"""Settings sized to a task's real data, for what the user left unset.

The engine's defaults are the toy task's: twenty-token responses, 8 SFT epochs, 12 reward-model
epochs, 12800 episodes. On real data they are wrong in both directions: responses are cut long before
they end, and a run takes days. A task that marks itself ``sized_to_data`` (``task=dataset``) gets,
for every key below that the command line does not set, a value read off its own data before any
training, and the run prints them at its start:

- ``algo.sampling.max_new_tokens`` and ``eval.sampling.max_new_tokens``: the 95th percentile of the
  demonstrations' response lengths (EOS included), at least 16, at most half the model's positions;
- ``data.max_prompt_tokens``: the 99th percentile of the prompts' lengths, within what the positions
  leave after those responses, and ``data.truncate=true``: the longest prompts are cut from the left
  (counted in the ``data/`` metrics) rather than stopping the run;
- ``sft.epochs`` 2, ``reward.epochs`` 1, DPO's ``algo.epochs`` 1 (one pass over preference data is
  the usual recipe: a reward model overfits after one, Ouyang et al. 2022), each raised to make at
  least ``MIN_STEPS`` optimiser steps on a small set, never above the toy default;
- an on-policy ``algo.total_episodes``: one pass over the training prompts.

The reward model's and DPO's items are the training records and pairs of a preference file where the
feedback reads one (``feedback=dataset``), else one record per training prompt (and its pairs).

With LoRA adapters (``model.lora.r > 0``), every learning rate the command line leaves unset (``sft.lr``,
``reward.lr``, ``algo.lr``, ``algo.critic_lr``) is :data:`LORA_LR_FACTOR` times its full fine-tuning
default: a LoRA update is scaled down (its B matrix starts at zero, and alpha / r scales it), and at the
full fine-tuning rate a run on real data moves its policy by less than it can measure.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

MIN_STEPS = 50
LORA_LR_FACTOR = 10
"""LoRA's best learning rate is about ten times full fine-tuning's, across model sizes and data (Schulman
et al. 2025, "LoRA Without Regret", Thinking Machines Lab)."""
MIN_NEW_TOKENS = 16
_ABSENT = object()


@dataclass(frozen=True)
class Sized:
    """One setting read off the data: its key, value and why."""

    key: str
    value: object
    why: str


def _quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _user_keys(overrides) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def _epochs(base: int, cap: int, items: int, batch_size: int) -> tuple[int, str]:
    steps_per_epoch = max(1, math.ceil(items / batch_size))
    epochs = min(cap, max(base, math.ceil(MIN_STEPS / steps_per_epoch)))
    return epochs, f"{items} items, {steps_per_epoch} step{'s' if steps_per_epoch > 1 else ''} an epoch"


def _preference_items(plan, task, feedback) -> tuple[int, int]:
    """(records, pairs) the reward model and DPO train on: a preference file's training split where the
    feedback reads one, else one record per training prompt, each with K(K-1)/2 pairs."""
    prompts = max(1, len(task.train_prompts))
    if feedback is not None and "feedback" in plan.components and not plan.components["feedback"].traits["needs_candidates"]:
        records = feedback.collect(None, None, plan.preference_kind, plan.cfg.seed, "train")
        return max(1, len(records)), max(1, sum(len(r.preference_pairs()) for r in records))
    k = getattr(plan.settings.get("feedback"), "responses_per_prompt", 2) or 2
    rounds = getattr(plan.settings.get("feedback"), "rounds", 1) or 1
    return prompts * rounds, prompts * rounds * k * (k - 1) // 2


def _lora_rates(plan, offer) -> None:
    """With adapters, each learning rate at :data:`LORA_LR_FACTOR` times its default."""
    if plan.lora is None:
        return
    why = f"LoRA adapters: {LORA_LR_FACTOR}x the full fine-tuning rate"
    for group, name in (("sft", "lr"), ("reward", "lr"), ("algo", "lr"), ("algo", "critic_lr")):
        value = getattr(plan.settings.get(group), name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (group != "sft" or plan.settings["sft"].enabled):
            offer(f"{group}.{name}", float(value) * LORA_LR_FACTOR, why)


def sized_settings(plan, task, tokenizer, positions, feedback=None) -> list[Sized]:
    """What :mod:`this module <rlhf_lab.run.sizing>` would set for ``plan`` on ``task`` (nothing for a
    task that is not ``sized_to_data``); keys the command line sets are left out.

    :param feedback: the built feedback source: a preference file's records size the reward model and DPO.
    """
    from rlhf_lab.data import encode_responses

    if not getattr(task, "sized_to_data", False):
        return []
    cfg, settings, user = plan.cfg, plan.settings, _user_keys(plan.overrides)
    sized: list[Sized] = []

    def offer(key: str, value, why: str) -> None:
        if key not in user and OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            sized.append(Sized(key, value, why))

    demonstrations = task.sft_train + task.sft_eval
    new_tokens = None
    if demonstrations:
        lengths = [len(ids) for ids in encode_responses(tokenizer, [r for _, r in demonstrations])]
        new_tokens = max(MIN_NEW_TOKENS, _quantile(lengths, 0.95))
        if positions:
            new_tokens = min(new_tokens, positions // 2)
        why = f"95th percentile of {len(lengths)} demonstration responses"
        offer("algo.sampling.max_new_tokens", new_tokens, why)
        offer("eval.sampling.max_new_tokens", new_tokens, why)
    prompts = task.train_prompts + task.eval_prompts
    if prompts and positions:
        longest_new = max(s.max_new_tokens for s in (plan.candidate_sampling, settings["eval"].sampling))
        if new_tokens is not None:
            longest_new = new_tokens if "algo.sampling.max_new_tokens" not in user else max(new_tokens, longest_new)
        # one batched call of the fast tokenizer (the ids of encode_prompt), not one call per prompt
        p99 = _quantile([len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]], 0.99)
        offer("data.max_prompt_tokens", max(1, min(p99, positions - longest_new)), f"99th percentile of {len(prompts)} prompts")
        offer("data.truncate", True, "the longest prompts are cut from the left, not refused")
    if plan.settings["sft"].enabled and task.sft_train:
        offer("sft.epochs", *_epochs(2, settings["sft"].epochs, len(task.sft_train), settings["sft"].batch_size))
    algo = settings["algo"]
    if plan.uses_preferences:
        records, pairs = _preference_items(plan, task, feedback)
        if "reward" in settings and hasattr(settings["reward"], "epochs") and "reward_model" in plan.route:
            offer("reward.epochs", *_epochs(1, settings["reward"].epochs, records, settings["reward"].batch_size))
        if "preferences" in plan.consumes and hasattr(algo, "epochs"):
            offer("algo.epochs", *_epochs(1, algo.epochs, pairs, algo.batch_size))
    if hasattr(algo, "total_episodes") and task.train_prompts:
        episodes = max(algo.rollout_batch_size, len(task.train_prompts) // algo.rollout_batch_size * algo.rollout_batch_size)
        offer("algo.total_episodes", episodes, f"one pass over {len(task.train_prompts)} training prompts, in whole rollouts of {algo.rollout_batch_size}")
    _lora_rates(plan, offer)
    return sized


def apply_sizing(plan, task, tokenizer, positions, feedback=None):
    """``plan`` with the sized settings set (re-planned, so every check and cache key sees them), and
    the settings, printed at the start of the run."""
    from rlhf_lab.plugin_manager import get_plugin_manager
    from rlhf_lab.run.plan import make_plan

    sized = sized_settings(plan, task, tokenizer, positions, feedback)
    if not sized:
        return plan, sized
    cfg = plan.cfg.copy()
    for s in sized:
        OmegaConf.update(cfg, s.key, s.value, merge=False)
    log.info("settings sized to the data (set any of them to keep your own):\n%s",
             "\n".join(f"    {s.key}={s.value}  ({s.why})" for s in sized))
    return make_plan(cfg, get_plugin_manager().registry, plan.overrides, plan.in_sweep), sized
