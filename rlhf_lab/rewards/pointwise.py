"""Pointwise reward model: regress each response's score on its rating (mean squared error)."""

from __future__ import annotations

import torch

from rlhf_lab.ops.losses import pointwise_mse_loss
from rlhf_lab.rewards.base import RewardObjective


class PointwiseObjective(RewardObjective):
    """Regression on the records' ratings (registered with ``feedback_kind="rating"``)."""

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        return pointwise_mse_loss(scores, batch["targets"])
