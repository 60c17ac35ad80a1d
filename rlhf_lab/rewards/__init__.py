"""Reward-model objectives, registered as a built-in plugin.

Learned reward models (``pairwise``, ``pointwise``) are objectives that turn preference records into
batches and sequence scores into a loss (:class:`rlhf_lab.rewards.base.RewardObjective`); ``rule`` is
a Python function (:mod:`rlhf_lab.rewards.rule`). Factories import torch on first use.
"""

from rlhf_lab import hookimpl
from rlhf_lab.plugin_manager import lazy_factory
from rlhf_lab.rewards.configs import PairwiseRewardConfig, PointwiseRewardConfig
from rlhf_lab.rewards.rule import RuleRewardComponent, RuleRewardConfig


@hookimpl
def rlhf_lab_register_reward_models(register):
    register("pairwise", lazy_factory("rlhf_lab.rewards.pairwise:PairwiseObjective", consumes=("reward_model",), feedback_kind="ranking"), PairwiseRewardConfig)
    register("pointwise", lazy_factory("rlhf_lab.rewards.pointwise:PointwiseObjective", consumes=("reward_model",), feedback_kind="rating"), PointwiseRewardConfig)
    register("rule", RuleRewardComponent, RuleRewardConfig)
