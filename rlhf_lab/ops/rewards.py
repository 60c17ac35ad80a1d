"""Turning sequence scores and a KL penalty into the rewards an advantage estimator sees."""

from __future__ import annotations

import torch


def kl_penalised_token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards ``-kl_coef * kl_t``, plus the sequence score on the last response token.

    Ziegler et al. 2019: the reward model scores the whole response, and the KL penalty to the
    reference is paid token by token (Huang et al. 2024, detail "per-token KL penalty").

    :param scores: (B,) sequence scores.
    :param kl: (B, T) per-token KL estimates (k1 in the usual recipe); ignored where ``mask`` is 0.
    :param mask: (B, T) 1 for response tokens; every row must have at least one.
    :returns: (B, T) rewards, 0 on padding.
    """
    rewards = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    return rewards.index_put((torch.arange(rewards.shape[0], device=rewards.device), last), scores.to(rewards.dtype), accumulate=True)


def kl_penalised_sequence_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """(B,) ``score - kl_coef * sum_t kl_t``: the KL penalty folded into one reward per sequence (RLOO, REINFORCE)."""
    return scores - kl_coef * (kl * mask).sum(1)
