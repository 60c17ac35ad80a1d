"""Configuration of best-of-n sampling (``algo=best_of_n``); the policy is :mod:`rlhf_lab.algos.best_of_n`."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf_lab.config import SamplingConfig


@dataclass
class BestOfNConfig:
    """Schema of ``algo=best_of_n``: sample n responses from the SFT policy, keep the best by the reward."""

    name: str = "best_of_n"
    n: int = 8
    """Candidates per response (Stiennon et al. 2020; Nakano et al. 2021 use 4-64)."""
    kl_samples: int = 64
    """Reference samples per prompt for the Monte-Carlo estimate of the policy's KL to the reference."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How the feedback candidates are sampled (for a learned reward model). At evaluation the n
    candidates are drawn with ``eval.sampling``, like every policy's samples, so the comparison is fair."""

    def __post_init__(self) -> None:
        if self.n < 1 or self.kl_samples < 1:
            raise ValueError(f"algo.n and algo.kl_samples must be >= 1, got {self.n} and {self.kl_samples}")
