"""Pairwise Bradley-Terry reward model: every ranked pair (K-choose-2 per K-wise ranking) is one term.

Each response is forwarded once and scored; the loss is ``-log sigmoid(s_better - s_worse)``
averaged over all pairs (Ouyang et al. 2022 train on all K-choose-2 comparisons of a prompt together).
"""

from __future__ import annotations

import torch

from rlhf_lab.ops.losses import bradley_terry_loss
from rlhf_lab.rewards.base import RewardObjective


class PairwiseObjective(RewardObjective):
    """Bradley-Terry on every (better, worse) pair of a record's ranking (registered with ``feedback_kind="ranking"``)."""

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        return bradley_terry_loss(scores[batch["pair_better"]], scores[batch["pair_worse"]])
