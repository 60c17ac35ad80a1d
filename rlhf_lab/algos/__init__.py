"""Policy-optimisation algorithms, registered as a built-in plugin.

Factories import their Lightning modules on first use, so listing plugins or composing a config
does not import torch.
"""

from rlhf_lab import hookimpl
from rlhf_lab.algos.ppo_config import PPOConfig
from rlhf_lab.plugin_manager import lazy_factory


@hookimpl
def rlhf_lab_register_algorithms(register):
    register("ppo", lazy_factory("rlhf_lab.algos.ppo:PPOModule", requires_reward_model=True), PPOConfig)
