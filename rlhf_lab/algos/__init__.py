"""Policy-optimisation algorithms, registered as a built-in plugin through the same hook a third party uses.

Each factory declares what it ``consumes`` (besides the SFT policy and the reference, which every
algorithm gets): ``"reward"`` (a reward function) and/or ``"preferences"`` (preference records).
Factories import their modules on first use, so listing plugins or composing a config does not
import torch.
"""

from rlhf_lab import hookimpl
from rlhf_lab.algos.a2c_config import A2CConfig
from rlhf_lab.algos.best_of_n_config import BestOfNConfig
from rlhf_lab.algos.dpo_config import DPOConfig
from rlhf_lab.algos.policy_gradient_config import GRPOConfig, ReinforceConfig, RLOOConfig
from rlhf_lab.algos.ppo_config import PPOConfig
from rlhf_lab.plugin_manager import lazy_factory


@hookimpl
def rlhf_lab_register_algorithms(register):
    register("ppo", lazy_factory("rlhf_lab.algos.ppo:PPOModule", consumes=("reward",)), PPOConfig)
    register("a2c", lazy_factory("rlhf_lab.algos.a2c:A2CModule", consumes=("reward",)), A2CConfig)
    for name, schema in (("reinforce", ReinforceConfig), ("rloo", RLOOConfig), ("grpo", GRPOConfig)):
        register(name, lazy_factory("rlhf_lab.algos.policy_gradient:PolicyGradientModule", consumes=("reward",)), schema)
    register("dpo", lazy_factory("rlhf_lab.algos.dpo:DPOModule", consumes=("preferences",)), DPOConfig)
    register("best_of_n", lazy_factory("rlhf_lab.algos.best_of_n:best_of_n", consumes=("reward",), trains_policy=False), BestOfNConfig)
