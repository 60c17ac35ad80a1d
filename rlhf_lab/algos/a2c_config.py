"""Configuration of A2C (``algo=a2c``); the algorithm itself is in :mod:`rlhf_lab.algos.a2c`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rlhf_lab.algos.on_policy_config import ActorCriticConfig


@dataclass
class A2CConfig(ActorCriticConfig):
    """Schema of ``algo=a2c``: advantage actor-critic, one gradient step per rollout."""

    name: str = "a2c"
    lr: float = 1e-4
    """Adam learning rate of the policy; with one step per rollout and no clipping, lower than PPO's."""
    critic_lr: Optional[float] = 3e-4
    """Learning rate of the critic; null: same as ``lr``."""
    returns: str = "gae"
    """Return estimator: gae (Schulman et al. 2016) or nstep (Mnih et al. 2016)."""
    n_steps: int = 8
    """Bootstrapping horizon in tokens (returns=nstep; Mnih et al.: 5 environment steps)."""
    vf_coef: float = 0.5
    """Weight of the value loss (OpenAI Baselines' A2C: 0.5)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.returns not in ("gae", "nstep"):
            raise ValueError(f"algo.returns must be 'gae' or 'nstep', got '{self.returns}'")
        if self.n_steps < 1:
            raise ValueError(f"algo.n_steps must be >= 1, got {self.n_steps}")
