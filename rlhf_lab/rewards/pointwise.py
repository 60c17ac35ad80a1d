"""Pointwise reward model: regress each response's score on its rating (mean squared error)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab import hookimpl
from rlhf_lab.ops.losses import pointwise_mse_loss
from rlhf_lab.rewards.base import RewardConfig, RewardObjective


@dataclass
class PointwiseRewardConfig(RewardConfig):
    """Schema of ``reward=pointwise``."""

    name: str = "pointwise"


class PointwiseObjective(RewardObjective):
    feedback_kind = "rating"

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        return pointwise_mse_loss(scores, batch["targets"])


@hookimpl
def rlhf_lab_register_reward_models(register):
    register("pointwise", PointwiseObjective, PointwiseRewardConfig)
