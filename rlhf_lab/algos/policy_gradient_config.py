"""Configurations of the critic-free policy gradients (``algo=reinforce``, ``algo=rloo``, ``algo=grpo``).

One schema with the fields they share; each algorithm's schema only changes defaults, so a reader
sees at a glance how REINFORCE, RLOO and GRPO differ: the baseline, the samples per prompt, and where
the KL penalty goes. The algorithm is :mod:`rlhf_lab.algos.policy_gradient`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_lab.algos.on_policy_config import OnPolicyConfig

BASELINES = ("moving_average", "leave_one_out", "group")


@dataclass
class PolicyGradientConfig(OnPolicyConfig):
    """Fields shared by the critic-free policy gradients."""

    lr: float = 1e-4
    """Adam learning rate of the policy."""
    baseline: str = "leave_one_out"
    """moving_average (REINFORCE; Williams 1992), leave_one_out (RLOO; Ahmadian et al. 2024) or
    group (GRPO; Shao et al. 2024)."""
    samples_per_prompt: int = 4
    """k responses per prompt in a rollout (the group of RLOO and GRPO; Ahmadian et al.: 2-4)."""
    baseline_decay: float = 0.9
    """moving_average: weight of the old baseline in each update."""
    scale_by_std: bool = True
    """group: divide by the group's standard deviation (GRPO; off in Dr. GRPO, Liu et al. 2025)."""
    kl_penalty: str = "reward"
    """reward: ``score - kl_coef * sum(k1)`` per sequence (RLOO); loss: ``kl_coef * k3`` added to the
    loss per token (GRPO)."""
    update_epochs: int = 1
    """Passes over each rollout; with 1 pass and one minibatch the update is plain REINFORCE."""
    minibatch_size: int = 256
    """Sequences per gradient step (prompts x samples_per_prompt make a rollout)."""
    clip_range: float = 0.2
    """Ratio clip, active only once minibatches become off-policy (several minibatches or epochs)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baseline not in BASELINES:
            raise ValueError(f"algo.baseline must be one of {', '.join(BASELINES)}, got '{self.baseline}'")
        if self.kl_penalty not in ("reward", "loss"):
            raise ValueError(f"algo.kl_penalty must be 'reward' or 'loss', got '{self.kl_penalty}'")
        if self.samples_per_prompt < 1 or (self.baseline != "moving_average" and self.samples_per_prompt < 2):
            raise ValueError(f"algo.samples_per_prompt must be >= 2 for baseline={self.baseline} (>= 1 otherwise), got {self.samples_per_prompt}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"algo.baseline_decay must be in [0, 1), got {self.baseline_decay}")
        if self.update_epochs < 1 or self.minibatch_size < 1 or self.clip_range <= 0:
            raise ValueError("algo needs update_epochs >= 1, minibatch_size >= 1 and clip_range > 0")
        rollout = self.rollout_batch_size * self.samples_per_prompt
        if rollout % self.minibatch_size and self.minibatch_size < rollout:
            raise ValueError(
                f"algo.minibatch_size ({self.minibatch_size}) must divide the rollout of "
                f"{self.rollout_batch_size} prompts x {self.samples_per_prompt} samples = {rollout} sequences"
            )


@dataclass
class ReinforceConfig(PolicyGradientConfig):
    """Schema of ``algo=reinforce``: one sample per prompt, moving-average baseline."""

    name: str = "reinforce"
    baseline: str = "moving_average"
    samples_per_prompt: int = 1
    rollout_batch_size: int = 64


@dataclass
class RLOOConfig(PolicyGradientConfig):
    """Schema of ``algo=rloo``: k samples per prompt, each baselined by the mean of the other k-1."""

    name: str = "rloo"
    baseline: str = "leave_one_out"
    samples_per_prompt: int = 4
    rollout_batch_size: int = 16
    total_episodes: int = 3200
    """Prompts in total: with 4 samples each, the 12800 responses PPO samples by default."""


@dataclass
class GRPOConfig(PolicyGradientConfig):
    """Schema of ``algo=grpo``: k samples per prompt, group mean/std baseline, KL as a k3 loss term."""

    name: str = "grpo"
    baseline: str = "group"
    samples_per_prompt: int = 4
    rollout_batch_size: int = 16
    total_episodes: int = 3200
    """Prompts in total: with 4 samples each, the 12800 responses PPO samples by default."""
    kl_penalty: str = "loss"
