"""Every numeric check of the algorithm schemas at its boundary: the last value accepted and the first
refused. A check that is off by one (``< 1`` written ``< 2``, ``<= 0`` written ``< 0``) fails here."""

from __future__ import annotations

import pytest

from rlhf_lab.algos.a2c_config import A2CConfig
from rlhf_lab.algos.best_of_n_config import BestOfNConfig
from rlhf_lab.algos.dpo_config import DPOConfig
from rlhf_lab.algos.policy_gradient_config import GRPOConfig, ReinforceConfig, RLOOConfig
from rlhf_lab.algos.ppo_config import PPOConfig
from rlhf_lab.config import SamplingConfig, SFTConfig
from rlhf_lab.rewards.configs import PairwiseRewardConfig

TINY = 1e-9

# (schema, settings that must be accepted, the same setting one step past its limit)
BOUNDS = [
    # shared on-policy fields (REINFORCE has the fewest cross-field constraints)
    (ReinforceConfig, {"lr": TINY}, {"lr": 0.0}),
    (ReinforceConfig, {"max_grad_norm": TINY}, {"max_grad_norm": 0.0}),
    (ReinforceConfig, {"kl_coef": 0.0}, {"kl_coef": -TINY}),
    (ReinforceConfig, {"rollout_batch_size": 1, "total_episodes": 1}, {"rollout_batch_size": 0, "total_episodes": 1}),
    (ReinforceConfig, {"rollout_batch_size": 8, "total_episodes": 8}, {"rollout_batch_size": 8, "total_episodes": 7}),
    (ReinforceConfig, {"missing_eos_penalty": 0.0}, {"missing_eos_penalty": -TINY}),
    (ReinforceConfig, {"missing_eos_penalty": None}, {"sampling": SamplingConfig(temperature=0.0)}),
    (ReinforceConfig, {"sampling": SamplingConfig(temperature=TINY)}, {"sampling": SamplingConfig(top_k=1)}),
    (ReinforceConfig, {"sampling": SamplingConfig(top_p=1.0)}, {"sampling": SamplingConfig(top_p=0.999)}),
    # policy-gradient fields
    (ReinforceConfig, {"samples_per_prompt": 1}, {"samples_per_prompt": 0}),
    (RLOOConfig, {"samples_per_prompt": 2}, {"samples_per_prompt": 1}),
    (GRPOConfig, {"samples_per_prompt": 2}, {"samples_per_prompt": 1}),
    (ReinforceConfig, {"baseline_decay": 0.0}, {"baseline_decay": -TINY}),
    (ReinforceConfig, {"baseline_decay": 0.999}, {"baseline_decay": 1.0}),
    (ReinforceConfig, {"update_epochs": 1}, {"update_epochs": 0}),
    (ReinforceConfig, {"minibatch_size": 1}, {"minibatch_size": 0}),
    (ReinforceConfig, {"clip_range": TINY}, {"clip_range": 0.0}),
    (RLOOConfig, {"rollout_batch_size": 16, "minibatch_size": 8}, {"rollout_batch_size": 16, "minibatch_size": 24}),
    (RLOOConfig, {"rollout_batch_size": 16, "minibatch_size": 64}, {"rollout_batch_size": 16, "minibatch_size": 48}),
    # actor-critic fields
    (PPOConfig, {"gamma": 0.0, "lam": 0.0}, {"gamma": -TINY}),
    (PPOConfig, {"gamma": 1.0, "lam": 1.0}, {"lam": 1.0 + 1e-6}),
    (PPOConfig, {"vf_coef": 0.0}, {"vf_coef": -TINY}),
    (PPOConfig, {"ent_coef": 0.0}, {"ent_coef": -TINY}),
    (PPOConfig, {"critic_lr": TINY}, {"critic_lr": 0.0}),
    (PPOConfig, {"critic_init": "policy"}, {"critic_init": "value"}),
    (A2CConfig, {"returns": "nstep", "n_steps": 1}, {"returns": "nstep", "n_steps": 0}),
    (A2CConfig, {"returns": "gae"}, {"returns": "td"}),
    # PPO fields
    (PPOConfig, {"minibatch_size": 64}, {"minibatch_size": 0}),
    (PPOConfig, {"minibatch_size": 32}, {"minibatch_size": 48}),
    (PPOConfig, {"target_kl": TINY}, {"target_kl": 0.0}),
    (PPOConfig, {"kl_horizon": 1}, {"kl_horizon": 0}),
    (PPOConfig, {"kl_controller": "adaptive", "kl_horizon": 64}, {"kl_controller": "adaptive", "kl_horizon": 63}),
    (PPOConfig, {"kl_controller": "fixed"}, {"kl_controller": "linear"}),
    (PPOConfig, {"value_clip_range": TINY}, {"value_clip_range": 0.0}),
    (PPOConfig, {"ppo_epochs": 1}, {"ppo_epochs": 0}),
    (PPOConfig, {"clip_range": TINY}, {"clip_range": 0.0}),
    # DPO
    (DPOConfig, {"beta": TINY}, {"beta": 0.0}),
    (DPOConfig, {"lr": TINY}, {"lr": 0.0}),
    (DPOConfig, {"epochs": 1}, {"epochs": 0}),
    (DPOConfig, {"batch_size": 1}, {"batch_size": 0}),
    (DPOConfig, {"max_grad_norm": TINY}, {"max_grad_norm": 0.0}),
    (DPOConfig, {"label_smoothing": 0.0}, {"label_smoothing": -TINY}),
    (DPOConfig, {"label_smoothing": 0.4999}, {"label_smoothing": 0.5}),
    (DPOConfig, {"loss": "ipo"}, {"loss": "kto"}),
    (DPOConfig, {"max_steps": 1}, {"max_steps": 0}),
    (SFTConfig, {"max_steps": 1}, {"max_steps": 0}),
    (PairwiseRewardConfig, {"max_steps": 1}, {"max_steps": 0}),
    # best-of-n
    (BestOfNConfig, {"n": 1}, {"n": 0}),
    (BestOfNConfig, {"kl_samples": 1}, {"kl_samples": 0}),
]


@pytest.mark.parametrize("schema,accepted,refused", BOUNDS, ids=[f"{s.__name__}-{'-'.join(map(str, r))}" for s, _, r in BOUNDS])
def test_limit_is_exactly_where_the_schema_says(schema, accepted, refused):
    schema(**accepted)
    with pytest.raises(ValueError):
        schema(**refused)
