"""Per-token estimators of KL(pi || ref) from log-probabilities of tokens sampled from pi.

With ``log_ratio = logp - ref_logp`` (Schulman, "Approximating KL Divergence", 2020):
- k1 = log_ratio: unbiased, high variance, can be negative per token;
- k2 = log_ratio**2 / 2: biased, low variance, always >= 0;
- k3 = (exp(-log_ratio) - 1) + log_ratio: unbiased, low variance, always >= 0.
"""

from __future__ import annotations

import torch


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Naive estimator ``logp - ref_logp``; RLHF puts this in the per-token reward."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Squared-log-ratio estimator ``(logp - ref_logp)**2 / 2``."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Control-variate estimator ``(r - 1) - log r`` with ``r = ref_p / p``."""
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
