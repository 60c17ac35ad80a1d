"""Configuration of PPO (``algo=ppo``); the algorithm itself is in :mod:`rlhf_lab.algos.ppo`."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_lab.algos.on_policy_config import ActorCriticConfig


@dataclass
class PPOConfig(ActorCriticConfig):
    """Schema of ``algo=ppo``. Defaults suit the toy task; the paper value is given where it differs."""

    name: str = "ppo"
    minibatch_size: int = 16
    """Sequences per gradient step."""
    ppo_epochs: int = 4
    """Passes over each rollout batch (Huang et al.: 4)."""
    clip_range: float = 0.2
    """Policy ratio clip epsilon (Schulman et al. 2017: 0.2)."""
    value_clip_range: float = 0.2
    """Value clip around the rollout's values (Huang et al.: 0.2)."""
    kl_controller: str = "fixed"
    """fixed or adaptive (Ziegler et al. 2019)."""
    target_kl: float = 6.0
    """Adaptive controller: target KL per response, in nats."""
    kl_horizon: int = 10000
    """Adaptive controller: horizon in episodes."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.minibatch_size < 1:
            raise ValueError(f"algo.minibatch_size must be >= 1, got {self.minibatch_size}")
        if self.target_kl <= 0 or self.kl_horizon < 1:
            raise ValueError(f"algo needs target_kl > 0 and kl_horizon >= 1; got {self.target_kl}, {self.kl_horizon}")
        if self.value_clip_range <= 0:
            raise ValueError(f"algo.value_clip_range must be > 0, got {self.value_clip_range}")
        if self.kl_controller == "adaptive" and self.rollout_batch_size > self.kl_horizon:
            raise ValueError(
                f"algo.kl_horizon ({self.kl_horizon}) must be at least algo.rollout_batch_size ({self.rollout_batch_size}): "
                "a shorter horizon moves the KL coefficient by more than 20% per iteration"
            )
        if self.rollout_batch_size % self.minibatch_size:
            raise ValueError(f"algo.rollout_batch_size ({self.rollout_batch_size}) must be a multiple of algo.minibatch_size ({self.minibatch_size})")
        if self.kl_controller not in ("fixed", "adaptive"):
            raise ValueError(f"algo.kl_controller must be 'fixed' or 'adaptive', got '{self.kl_controller}'")
        if self.ppo_epochs < 1 or self.clip_range <= 0:
            raise ValueError("algo needs ppo_epochs >= 1 and clip_range > 0")
