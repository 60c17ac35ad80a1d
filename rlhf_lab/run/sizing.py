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
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

MIN_STEPS = 50
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


def sized_settings(plan, task, tokenizer, positions) -> list[Sized]:
    """What :mod:`this module <rlhf_lab.run.sizing>` would set for ``plan`` on ``task`` (nothing for a
    task that is not ``sized_to_data``); keys the command line sets are left out."""
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
    if "reward" in settings and hasattr(settings["reward"], "epochs") and "reward_model" in plan.route:
        records = max(1, len(task.train_prompts))  # one record per training prompt when candidates are labelled
        offer("reward.epochs", *_epochs(1, settings["reward"].epochs, records, settings["reward"].batch_size))
    if "preferences" in plan.consumes and hasattr(algo, "epochs"):
        offer("algo.epochs", *_epochs(1, algo.epochs, max(1, len(task.train_prompts)), algo.batch_size))
    if hasattr(algo, "total_episodes") and task.train_prompts:
        episodes = max(algo.rollout_batch_size, len(task.train_prompts) // algo.rollout_batch_size * algo.rollout_batch_size)
        offer("algo.total_episodes", episodes, f"one pass over {len(task.train_prompts)} training prompts, in whole rollouts of {algo.rollout_batch_size}")
    return sized


def apply_sizing(plan, task, tokenizer, positions):
    """``plan`` with the sized settings set (re-planned, so every check and cache key sees them), and
    the settings, printed at the start of the run."""
    from rlhf_lab.plugin_manager import get_plugin_manager
    from rlhf_lab.run.plan import make_plan

    sized = sized_settings(plan, task, tokenizer, positions)
    if not sized:
        return plan, sized
    cfg = plan.cfg.copy()
    for s in sized:
        OmegaConf.update(cfg, s.key, s.value, merge=False)
    log.info("settings sized to the data (set any of them to keep your own):\n%s",
             "\n".join(f"    {s.key}={s.value}  ({s.why})" for s in sized))
    return make_plan(cfg, get_plugin_manager().registry, plan.overrides, plan.in_sweep), sized
