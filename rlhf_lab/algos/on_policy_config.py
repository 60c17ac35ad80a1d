"""Config fields every on-policy algorithm shares (PPO, A2C, REINFORCE, RLOO, GRPO)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rlhf_lab.config import SamplingConfig


@dataclass
class OnPolicyConfig:
    """Rollouts, optimiser and KL penalty. Defaults suit the toy task; the paper value is given where it differs."""

    name: str = ""
    lr: float = 3e-4
    """Adam learning rate of the policy (Ouyang et al.: ~9.65e-6 for 1.3B models)."""
    total_episodes: int = 12800
    """Prompts processed in total; iterations = total_episodes // rollout_batch_size."""
    rollout_batch_size: int = 64
    """Prompts per rollout (one iteration), over all ranks: each of N processes samples 1/N of them."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm (Huang et al.: 1.0)."""
    kl_coef: float = 0.05
    """Coefficient of the KL penalty to the reference (Ziegler et al.: 0.05)."""
    missing_eos_penalty: Optional[float] = 1.0
    """Subtracted from the score of a response that has no EOS; null: no penalty."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How rollouts (and the feedback candidates) are sampled."""
    group_by_length: bool = True
    """Fill each rollout with prompts of similar length (as ``sft.group_by_length``): a rollout prefills
    and caches its left padding for every sample, so on real data this cuts its work; every prompt is
    still drawn once a pass. false: plain shuffled prompts."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.max_grad_norm <= 0 or self.kl_coef < 0:
            raise ValueError(f"algo needs lr > 0, max_grad_norm > 0 and kl_coef >= 0; got {self.lr}, {self.max_grad_norm}, {self.kl_coef}")
        if self.rollout_batch_size < 1:
            raise ValueError(f"algo.rollout_batch_size must be >= 1, got {self.rollout_batch_size}")
        if self.total_episodes < self.rollout_batch_size:
            raise ValueError(f"algo.total_episodes ({self.total_episodes}) must be at least algo.rollout_batch_size ({self.rollout_batch_size})")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ValueError(f"algo.missing_eos_penalty must be >= 0 or null, got {self.missing_eos_penalty}")
        if self.sampling.temperature == 0:
            raise ValueError("algo.sampling.temperature must be > 0: on-policy algorithms need a stochastic policy")
        # The update's log-probs and the KL come from the full distribution; a filtered sampler would
        # make the ratio and the KL refer to another policy than the one that sampled.
        if self.sampling.top_k != 0 or self.sampling.top_p != 1.0:
            raise ValueError(
                f"algo.sampling.top_k={self.sampling.top_k} / top_p={self.sampling.top_p}: on-policy algorithms sample from "
                "the full distribution (top_k=0, top_p=1.0), since their log-probs and KL are those of the unfiltered policy"
            )


@dataclass
class ActorCriticConfig(OnPolicyConfig):
    """Fields of the algorithms with a learned critic (PPO, A2C)."""

    critic_lr: Optional[float] = None
    """Learning rate of the critic; null: same as ``lr``."""
    gamma: float = 1.0
    """Discount (1.0 for RLHF: the episode is one response)."""
    lam: float = 0.95
    """GAE lambda (Huang et al.: 0.95)."""
    vf_coef: float = 0.1
    """Weight of the value loss (Huang et al.: 0.1)."""
    ent_coef: float = 0.0
    """Entropy bonus weight (0 in most RLHF setups; Mnih et al.: 0.01 for Atari)."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0 / std 1 over each rollout batch (Huang et al.: on)."""
    critic_init: str = "reward"
    """Initialise the critic from the reward model, its normaliser folded into the head (Huang et al.;
    from the policy when the reward is a rule), or from the policy."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"algo.gamma and algo.lam must be in [0, 1], got {self.gamma} and {self.lam}")
        if self.vf_coef < 0 or self.ent_coef < 0:
            raise ValueError("algo.vf_coef and algo.ent_coef must be >= 0")
        if self.critic_lr is not None and self.critic_lr <= 0:
            raise ValueError(f"algo.critic_lr must be > 0 or null, got {self.critic_lr}")
        if self.critic_init not in ("reward", "policy"):
            raise ValueError(f"algo.critic_init must be 'reward' or 'policy', got '{self.critic_init}'")
