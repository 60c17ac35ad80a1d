"""Advantage actor-critic (A2C; Mnih et al. 2016, synchronous form) for language models.

The same rollout engine and per-token KL-penalised rewards as PPO, then one gradient step per rollout:

1. rollout: responses, log-probs, reference log-probs, scores and the critic's values;
2. rewards: ``-kl_coef * (logp - ref_logp)`` per token plus the score on the last token;
3. advantages and returns: GAE(gamma, lambda) or n-step returns bootstrapped from the critic;
   advantages whitened over the batch;
4. one step on ``-A * log pi(a|s) + vf_coef * 0.5 * (V - R)^2 - ent_coef * H``: the data are fresh,
   so there is no importance ratio and no clipping.
"""

from __future__ import annotations

import torch

from rlhf_lab.algos.a2c_config import A2CConfig
from rlhf_lab.algos.inputs import AlgoInputs
from rlhf_lab.algos.on_policy import OnPolicyModule, build_critic
from rlhf_lab.data import response_logprobs
from rlhf_lab.ops.advantages import gae, nstep_returns
from rlhf_lab.ops.kl import kl_k1
from rlhf_lab.ops.losses import explained_variance
from rlhf_lab.ops.masked import masked_mean, masked_whiten
from rlhf_lab.ops.rewards import kl_penalised_token_rewards
from rlhf_lab.rollout import Experience


def a2c_loss(logprobs, advantages, values, returns, entropy, mask, vf_coef: float, ent_coef: float) -> dict[str, torch.Tensor]:
    """The A2C objective, averaged over valid tokens; ``advantages`` and ``returns`` carry no gradient."""
    policy_loss = -masked_mean(advantages * logprobs, mask)
    value_loss = 0.5 * masked_mean((values - returns) ** 2, mask)
    entropy = masked_mean(entropy, mask)
    return {"loss": policy_loss + vf_coef * value_loss - ent_coef * entropy, "losses/policy_loss": policy_loss.detach(),
            "losses/value_loss": value_loss.detach(), "losses/entropy": entropy.detach()}


class A2CModule(OnPolicyModule):
    """A2C with a frozen reference, a frozen reward function and a learned critic."""

    values_in_rollout = False

    def __init__(self, cfg: A2CConfig, inputs: AlgoInputs) -> None:
        super().__init__(cfg, inputs, critic=build_critic(inputs, cfg.critic_init))

    def advantages(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, returns), each (B, R)."""
        cfg, mask = self.cfg, exp.response_mask
        rewards = kl_penalised_token_rewards(exp.scores, kl_k1(exp.logprobs, exp.ref_logprobs), mask, cfg.kl_coef)
        if cfg.returns == "gae":
            advantages, returns = gae(rewards, exp.values, mask, cfg.gamma, cfg.lam)
        else:
            advantages, returns = nstep_returns(rewards, exp.values, mask, cfg.gamma, cfg.n_steps)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask, all_reduce_sum=self.all_reduce_sum())
        return advantages, returns

    def iteration(self, exp: Experience) -> dict[str, torch.Tensor]:
        cfg, batch, mask = self.cfg, exp.batch, exp.response_mask
        p = batch["prompt_len"]
        # The critic has not moved since the rollout: its values, detached, are the rollout's values.
        values = self.critic(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[:, p - 1 : -1]
        exp.values = values.detach() * mask
        advantages, returns = self.advantages(exp)
        logprobs, entropy = response_logprobs(self.policy, batch, mask, cfg.sampling.temperature, entropy_grad=cfg.ent_coef > 0)
        out = a2c_loss(logprobs, advantages, values, returns, entropy, mask, cfg.vf_coef, cfg.ent_coef)
        out["losses/grad_norm"] = self.optimise(out.pop("loss"))
        out["losses/explained_variance"] = explained_variance(exp.values, returns, mask)
        return out
