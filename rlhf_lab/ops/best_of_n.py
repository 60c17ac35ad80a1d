"""KL divergence of the best-of-n policy from the base policy.

The best-of-n policy pi_n draws n responses from pi and keeps the one with the highest reward. When
rewards are distinct, the kept response is y exactly when all n draws have reward <= reward(y) and at
least one of them is y, so with ``p = pi(y)`` and ``F = P_pi(reward < reward(y))``:

    pi_n(y) = (F + p)^n - F^n.

``log n - (n - 1) / n``, the value commonly quoted for KL(pi_n || pi) (Stiennon et al. 2020), is the
limit of the exact KL as the distribution becomes fine, and an upper bound on it (Beirami et al. 2024).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")


def best_of_n_kl_closed_form(n: int) -> float:
    """``log n - (n - 1) / n``: the usual estimate (and upper bound) of KL(pi_n || pi)."""
    _check_n(n)
    return math.log(n) - (n - 1) / n


def best_of_n_log_ratio(logp: torch.Tensor, below: torch.Tensor, n: int) -> torch.Tensor:
    """``log pi_n(y) / pi(y) = log((F + p)^n - F^n) - log p`` for responses with distinct rewards.

    Evaluated as ``n log(F + p) + log(1 - (F / (F + p))^n) - log p`` with ``x = log((F + p) / F)`` from
    softplus(log p - log F): the direct formula subtracts two nearly equal powers and returns log(0)
    once p is below float precision relative to F, while here ``-expm1(-n x)`` keeps every digit (for
    p = 1e-30 the ratio is correctly about ``log(n F^(n-1))``).

    :param logp: log pi(y), any shape; must be finite (p > 0).
    :param below: F = P_pi(reward < reward(y)), probabilities broadcastable to ``logp``.
    :param n: number of draws, >= 1.
    :returns: the log-ratio, shape of ``logp`` broadcast with ``below``.
    """
    _check_n(n)
    below = torch.as_tensor(below, dtype=logp.dtype, device=logp.device)
    lowest = below <= 0
    # Substituting F = 1 where F = 0 keeps the unused branch finite, so neither the values nor the
    # gradients of torch.where pick up NaN from it.
    log_below = torch.log(torch.where(lowest, torch.ones_like(below), below))
    x = F.softplus(logp - log_below)  # log((F + p) / F) = log1p(p / F), overflow-safe when p >> F
    # For p far below F, x = softplus(z) underflows to 0 (z = log p - log F < -100 in float32); there
    # log(1 - e^(-n x)) = log(n) + z to within a relative n * e^z.
    z = logp - log_below
    tail = z < -20
    log_gap = torch.where(tail, math.log(n) + z, torch.log(-torch.expm1(-n * torch.where(tail, torch.ones_like(x), x))))
    general = n * (log_below + x) + log_gap - logp
    # The lowest-reward outcome is kept only if all n draws are it: pi_n(y) = p^n.
    return torch.where(lowest, (n - 1) * logp, general)


def best_of_n_kl_exact(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> float:
    """Exact KL(pi_n || pi) for a categorical ``pi`` whose outcomes have distinct rewards.

    :param probs: (K,) outcome probabilities, summing to 1; zero-probability outcomes are skipped
        (pi_n gives them probability 0 too).
    :param rewards: (K,) distinct rewards of the outcomes.
    :param n: number of draws, >= 1.
    :returns: ``sum_y pi_n(y) * log(pi_n(y) / pi(y))`` as a Python float.
    """
    _check_n(n)
    if probs.dim() != 1 or probs.shape != rewards.shape:
        raise ValueError(f"probs and rewards must be 1-D of the same length, got {tuple(probs.shape)} and {tuple(rewards.shape)}")
    order = torch.argsort(rewards)
    sorted_rewards = rewards[order]
    if bool((sorted_rewards[1:] == sorted_rewards[:-1]).any()):
        # With ties the kept response depends on tie-breaking and pi_n is no longer (F + p)^n - F^n.
        raise ValueError("rewards must be distinct")
    # float64: the KL is a sum of K small terms and the CDF is a running sum over K probabilities.
    p = probs[order].to(torch.float64)
    # Exclusive cumulative sum: the mass strictly below each outcome, without cumsum(p) - p's cancellation.
    below = torch.cat([p.new_zeros(1), torch.cumsum(p, 0)[:-1]])
    keep = p > 0
    logp = torch.log(p[keep])
    log_ratio = best_of_n_log_ratio(logp, below[keep], n)
    return float((torch.exp(logp + log_ratio) * log_ratio).sum())
