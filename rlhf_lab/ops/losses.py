"""Loss functions: PPO's clipped surrogate and value loss, Bradley-Terry, pointwise regression."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhf_lab.ops.kl import kl_k3
from rlhf_lab.ops.masked import masked_mean


@dataclass
class PolicyLossOutput:
    """Clipped-surrogate loss and its diagnostics (all scalars)."""

    loss: torch.Tensor
    clipfrac: torch.Tensor
    approx_kl: torch.Tensor


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> PolicyLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), averaged over valid tokens.

    ``loss = mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))`` with ``r = exp(logp - old_logp)``.
    ``clipfrac`` is the fraction of tokens where the clipped branch is taken; ``approx_kl`` is the k3
    estimate of KL(old || new) on the sampled tokens.
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
        approx_kl = masked_mean(kl_k3(old_logp, logp), mask)
    return PolicyLossOutput(loss=loss, clipfrac=clipfrac, approx_kl=approx_kl)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * mean(max((v - R)^2, (clip(v, v_old +- eps) - R)^2))``.

    :returns: ``(loss, clipfrac)``: clipfrac is the fraction of tokens where the clipped error is larger.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err_unclipped = (values - returns) ** 2
    err_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask)
    return loss, clipfrac


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``chosen > rejected`` under Bradley-Terry: ``-log sigmoid(s_c - s_r)``."""
    return -F.logsigmoid(chosen - rejected).mean()


def pointwise_mse_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted scores and rating targets."""
    return F.mse_loss(scores, targets)


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(target - predicted) / Var(target)`` over valid entries; 1 is a perfect critic."""
    residual = target - predicted
    var_target = masked_mean((target - masked_mean(target, mask)) ** 2, mask)
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return 1.0 - var_residual / var_target.clamp(min=1e-12)
