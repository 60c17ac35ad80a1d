"""Configuration of A2C (``algo=a2c``); the algorithm itself is in :mod:`rlhf_lab.algos.a2c`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rlhf_lab.algos.on_policy_config import OnPolicyConfig


@dataclass
class A2CConfig(OnPolicyConfig):
    """Schema of ``algo=a2c``: advantage actor-critic, one gradient step per rollout."""

    name: str = "a2c"
    lr: float = 1e-4
    """Adam learning rate of the policy; with one step per rollout and no clipping, lower than PPO's."""
    critic_lr: Optional[float] = 3e-4
    """Learning rate of the critic; null: same as ``lr``."""
    returns: str = "gae"
    """Return estimator: gae (Schulman et al. 2016) or nstep (Mnih et al. 2016)."""
    lam: float = 0.95
    """GAE lambda (returns=gae)."""
    n_steps: int = 8
    """Bootstrapping horizon in tokens (returns=nstep; Mnih et al.: 5 environment steps)."""
    gamma: float = 1.0
    """Discount (1.0 for RLHF: the episode is one response)."""
    vf_coef: float = 0.5
    """Weight of the value loss (OpenAI Baselines' A2C: 0.5)."""
    ent_coef: float = 0.0
    """Entropy bonus weight (Mnih et al.: 0.01 for Atari; 0 is usual for language models)."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0 / std 1 over each rollout batch."""
    critic_init: str = "reward"
    """Initialise the critic from the reward model (normaliser folded in; from the policy when the
    reward is a rule), or from the policy."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.returns not in ("gae", "nstep"):
            raise ValueError(f"algo.returns must be 'gae' or 'nstep', got '{self.returns}'")
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"algo.gamma and algo.lam must be in [0, 1], got {self.gamma} and {self.lam}")
        if self.n_steps < 1:
            raise ValueError(f"algo.n_steps must be >= 1, got {self.n_steps}")
        if self.vf_coef < 0 or self.ent_coef < 0:
            raise ValueError("algo.vf_coef and algo.ent_coef must be >= 0")
        if self.critic_lr is not None and self.critic_lr <= 0:
            raise ValueError(f"algo.critic_lr must be > 0 or null, got {self.critic_lr}")
        if self.critic_init not in ("reward", "policy"):
            raise ValueError(f"algo.critic_init must be 'reward' or 'policy', got '{self.critic_init}'")
