"""Statistics over the valid (mask == 1) entries of a tensor."""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is 1."""
    masked = values * mask
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over entries where ``mask`` is 1 (all entries, or along ``dim``)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries; Bessel-corrected like ``torch.var`` unless ``unbiased=False``."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        var = var * count / (count - 1).clamp(min=1)
    return var


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, all_reduce_sum=None
) -> torch.Tensor:
    """Scale valid entries to unit variance (and zero mean if ``shift_mean``); invalid entries become 0.

    PPO whitens advantages per rollout batch (Huang et al. 2024, detail "advantage whitening").

    :param all_reduce_sum: with several ranks, a function that sums a tensor over all of them, so the
        mean and variance are those of the whole batch, not of this rank's share.
    """
    if all_reduce_sum is None:
        mean, var = masked_mean(values, mask), masked_var(values, mask)
    else:
        mask = mask.to(values.dtype)
        sums = all_reduce_sum(torch.stack([(values * mask).sum(), (values * values * mask).sum(), mask.sum()]))
        total, total_sq, count = sums[0], sums[1], sums[2]
        mean = total / count.clamp(min=1)
        # Bessel-corrected like masked_var, over every rank's valid entries.
        var = (total_sq - count * mean * mean) / (count - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
