"""Reward-model objectives, registered as a built-in plugin.

An objective turns preference records into batches and sequence scores into a loss
(:class:`rlhf_lab.rewards.base.RewardObjective`). Factories import torch on first use.
"""

from rlhf_lab import hookimpl
from rlhf_lab.plugin_manager import lazy_factory
from rlhf_lab.rewards.configs import PairwiseRewardConfig, PointwiseRewardConfig


@hookimpl
def rlhf_lab_register_reward_models(register):
    register("pairwise", lazy_factory("rlhf_lab.rewards.pairwise:PairwiseObjective"), PairwiseRewardConfig)
    register("pointwise", lazy_factory("rlhf_lab.rewards.pointwise:PointwiseObjective"), PointwiseRewardConfig)
