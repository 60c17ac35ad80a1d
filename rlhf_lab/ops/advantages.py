"""Advantage estimators for per-token rewards on padded response batches."""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over a batch of token sequences.

    :param rewards: (B, T) per-token rewards; positions with ``mask == 0`` are ignored.
    :param values: (B, T) critic values V(s_t) for the state before token t.
    :param mask: (B, T) 1 for response tokens, 0 for padding after the end of the response.
    :returns: ``(advantages, returns)``, both (B, T) and 0 on padding; ``returns = advantages + values``.

    The episode ends at the last valid token: the value after it is taken as 0.
    """
    rewards, values, mask = rewards * mask, values * mask, mask.to(rewards.dtype)
    steps = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < steps else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask
