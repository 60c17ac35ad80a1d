"""Schemas of the reward-model components (``reward=pairwise``, ``reward=pointwise``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rlhf_lab.config import check_step_limit

ENSEMBLE_OBJECTIVES = ("mean", "mean_minus_std", "worst_case", "uncertainty_weighted")
"""The values of ``reward.ensemble_objective`` (implemented in :mod:`rlhf_lab.ops.ensemble`)."""


@dataclass
class RewardConfig:
    """Fields shared by reward-model schemas."""

    name: str = ""
    lr: float = 1e-3
    """AdamW learning rate of backbone and head."""
    epochs: int = 12
    """Passes over the training records."""
    batch_size: int = 32
    """Preference records per batch (each response in a record is forwarded once)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    share_prompt: bool = True
    """Forward each record's prompt once, with all its responses after it in one row, each response
    attending to the prompt and itself only (same scores as one row per response). Cheaper unless
    responses are long after short prompts (a row's attention grows with (prompt + all responses)^2):
    then set false for one row per response. Models that cannot take the mask (flash-attention,
    sliding-window layers) get one row per response anyway, with a warning."""
    init_from_sft: bool = True
    """Start the backbone from the SFT policy (Ouyang et al. 2022) instead of the base model."""
    path: Optional[str] = None
    """A trained reward model directory (e.g. ``reward_model`` printed by an earlier run with
    ``stop_after=reward_model``) to use instead of training one; no feedback is collected then."""
    max_steps: Optional[int] = None
    """Stop after this many gradient steps, or at the end of ``epochs``, whichever comes first (null:
    ``epochs`` alone). On real data an epoch can take hours: this bounds a run without shrinking the data."""
    disable_dropout: bool = True
    """Train with every dropout probability at 0, as TRL's RewardTrainer does by default (and Huang et
    al. 2024 for every RLHF stage): scores then do not depend on a dropout draw, and on a CPU each step
    costs 2-4x less. false: the model's own dropout."""
    ensemble_size: int = 1
    """Reward models trained on the same records (K): member k starts from the same backbone with its
    own head initialisation and data order (seed + k). Each member is its own cached artifact, so K = 5
    reuses the K = 1 run's model as member 0. The policy is optimised against ``ensemble_objective`` of
    the members' normalised scores, and every rollout logs the members' spread (``rollout/reward_spread``)."""
    ensemble_objective: str = "mean"
    """How the members' scores become the reward (``rlhf_lab.ops.ensemble``): ``mean``;
    ``mean_minus_std`` (mean - ensemble_coef x spread); ``worst_case`` (the lowest member);
    ``uncertainty_weighted`` (mean - ensemble_coef x variance, Coste et al. 2023). Every algorithm
    that consumes a reward (PPO, A2C, REINFORCE, RLOO, GRPO, best-of-n) optimises this."""
    ensemble_coef: float = 1.0
    """The spread's weight in ``mean_minus_std`` and the variance's in ``uncertainty_weighted``."""

    def __post_init__(self) -> None:
        if self.ensemble_size < 1:
            raise ValueError(f"reward.ensemble_size must be >= 1, got {self.ensemble_size}")
        if self.ensemble_objective not in ENSEMBLE_OBJECTIVES:
            raise ValueError(f"reward.ensemble_objective must be one of {', '.join(ENSEMBLE_OBJECTIVES)}, got {self.ensemble_objective!r}")
        if self.ensemble_objective != "mean" and self.ensemble_size < 2:
            raise ValueError(f"reward.ensemble_objective={self.ensemble_objective} needs a spread: set reward.ensemble_size >= 2")
        if self.ensemble_coef < 0:
            raise ValueError(f"reward.ensemble_coef must be >= 0, got {self.ensemble_coef}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.weight_decay < 0:
            raise ValueError(
                f"reward needs lr > 0, epochs >= 1, batch_size >= 1, weight_decay >= 0; got lr={self.lr}, epochs={self.epochs}, "
                f"batch_size={self.batch_size}, weight_decay={self.weight_decay}"
            )
        check_step_limit(self.max_steps, "reward.max_steps")


@dataclass
class PairwiseRewardConfig(RewardConfig):
    """Schema of ``reward=pairwise``: Bradley-Terry on all pairs of each K-wise ranking."""

    name: str = "pairwise"


@dataclass
class PointwiseRewardConfig(RewardConfig):
    """Schema of ``reward=pointwise``: regression on scalar ratings."""

    name: str = "pointwise"
