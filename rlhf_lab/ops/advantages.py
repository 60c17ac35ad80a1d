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


def nstep_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n-step bootstrapped returns (Sutton and Barto 2018, sec. 7.1) over a batch of token sequences.

    ``R_t = sum_{i < n, t + i valid} gamma^i r_{t+i} + gamma^n V(s_{t+n})``, where the bootstrap term is
    kept only when ``t + n`` is still a response token: past the last valid token the episode has
    ended and the value there is 0, so a window that runs off the end is a plain discounted sum.

    :param rewards: (B, T) per-token rewards; positions with ``mask == 0`` are ignored.
    :param values: (B, T) critic values V(s_t) for the state before token t.
    :param mask: (B, T) 1 for response tokens, 0 for padding after the end of the response.
    :param gamma: discount factor.
    :param n: number of reward steps before bootstrapping (>= 1); ``n >= T`` gives the Monte Carlo return.
    :returns: ``(advantages, returns)``, both (B, T) and 0 on padding; ``advantages = returns - values``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    mask = mask.to(rewards.dtype)
    # Zeroing the padding first means every shifted read below that lands past the end contributes 0,
    # which is exactly "no reward and no bootstrap after the episode ended" for right-padded rows.
    rewards, values = rewards * mask, values * mask
    steps = rewards.shape[-1]
    returns = torch.zeros_like(rewards)
    # One shifted add per window offset: vectorised over the batch and all start positions at once.
    for i in range(min(n, steps)):
        returns[:, : steps - i] += gamma**i * rewards[:, i:]
    if n < steps:
        returns[:, : steps - n] += gamma**n * values[:, n:]
    returns = returns * mask
    return (returns - values) * mask, returns


def _check_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Reshape (B,) scores into (B / k, k) groups of consecutive rows, validating the layout."""
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (B,), got shape {tuple(scores.shape)}")
    if group_size < 2:
        # With one sample per prompt there is no other sample to form a baseline from.
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    if scores.shape[0] % group_size != 0:
        raise ValueError(f"batch size {scores.shape[0]} is not divisible by group_size {group_size}")
    return scores.view(-1, group_size)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024).

    Each sample's baseline is the mean score of the other ``k - 1`` samples for the same prompt, so the
    baseline does not depend on the sample itself and the policy gradient stays unbiased.

    :param scores: (B,) sequence scores; the ``k = group_size`` samples of a prompt are consecutive rows.
    :param group_size: samples per prompt, ``k >= 2``; ``B`` must be divisible by it.
    :returns: (B,) ``score_i - mean_{j != i} score_j`` within each group.
    """
    groups = _check_groups(scores, group_size)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


def grpo_advantages(
    scores: torch.Tensor,
    group_size: int,
    scale_by_std: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath, outcome supervision).

    ``(score - group mean) / (group std + eps)`` with the unbiased sample std (as ``torch.std``). With
    ``scale_by_std=False`` only the mean is subtracted, as in Dr. GRPO (Liu et al. 2025), which argues
    the std division over-weights prompts whose samples are nearly all right or all wrong.

    :param scores: (B,) sequence scores; the ``k = group_size`` samples of a prompt are consecutive rows.
    :param group_size: samples per prompt, ``k >= 2``; ``B`` must be divisible by it.
    :param scale_by_std: divide by the group std (GRPO) or not (Dr. GRPO).
    :param eps: added to the std so that groups with identical scores give 0 instead of NaN.
    :returns: (B,) advantages.
    """
    groups = _check_groups(scores, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def ema_baseline(baseline: float | None, batch_mean: float, decay: float) -> float:
    """Moving-average reward baseline for REINFORCE (Williams 1992): one update per batch.

    :param baseline: the previous baseline, or ``None`` before the first batch.
    :param batch_mean: mean score of the current batch.
    :param decay: weight kept on the previous baseline, in [0, 1].
    :returns: ``batch_mean`` on the first batch (so the baseline does not start biased towards 0),
        else ``decay * baseline + (1 - decay) * batch_mean``.
    """
    if baseline is None:
        return float(batch_mean)
    return decay * baseline + (1.0 - decay) * batch_mean


def broadcast_to_tokens(sequence_advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Spread one advantage per sequence over its tokens, as bandit-style methods (RLOO, GRPO) do.

    :param sequence_advantages: (B,) one value per sequence.
    :param mask: (B, T) 1 for response tokens, 0 for padding.
    :returns: (B, T) the sequence's value on every valid token and 0 on padding.
    """
    return sequence_advantages.unsqueeze(-1) * mask.to(sequence_advantages.dtype)
