"""The run-time reward function: a learned reward model with its normaliser, or a rule."""

from __future__ import annotations

from rlhf_lab.run.store import Artifact


def learned(run, reward_model: Artifact):
    """The reward component's function of the trained (or given) reward model, frozen, on the inference device."""
    return run.reward.reward_function({"reward_model": reward_model}, run.tokenizer, run.dtype).to(run.frozen_device())


def rule(run):
    """The reward component's function of nothing (a rule), on the inference device."""
    return run.reward.reward_function({}, run.tokenizer, run.dtype).to(run.frozen_device())
