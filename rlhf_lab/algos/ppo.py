"""PPO for language models from a reward function, as in Ziegler et al. 2019 / Ouyang et al. 2022.

Follows the order of "The N Implementation Details of RLHF with PPO" (Huang et al. 2024); see
docs/algorithms/ppo.md for the numbered list. One training step of this module is one PPO iteration:

1. rollout (shared engine, :mod:`rlhf_lab.rollout`): sample responses with the current policy (KV
   cache, temperature), cut at EOS; score them with the frozen reward function (with a penalty if a
   response has no EOS); log-probs of the policy (from the sampler's own logits) and of the frozen
   reference, and the critic's values;
2. rewards: a per-token penalty ``-kl_coef * (logp - ref_logp)`` plus the score on the last token;
3. advantages: GAE(gamma, lambda), whitened over the batch (over all ranks when there are several);
4. update: ``ppo_epochs`` passes over shuffled minibatches with the clipped surrogate, the clipped
   value loss and an entropy bonus.
"""

from __future__ import annotations

import torch

from rlhf_lab.algos.inputs import AlgoInputs
from rlhf_lab.algos.kl_control import build_kl_controller
from rlhf_lab.algos.on_policy import OnPolicyModule, build_critic
from rlhf_lab.algos.ppo_config import PPOConfig
from rlhf_lab.data import response_logprobs
from rlhf_lab.ops.advantages import gae
from rlhf_lab.ops.kl import kl_k1
from rlhf_lab.ops.losses import clipped_value_loss, explained_variance, ppo_policy_loss
from rlhf_lab.ops.masked import masked_mean, masked_whiten
from rlhf_lab.ops.rewards import kl_penalised_token_rewards
from rlhf_lab.rollout import Experience


class PPOModule(OnPolicyModule):
    """PPO with a frozen reference policy, a frozen reward function and a learned critic."""


    def __init__(self, cfg: PPOConfig, inputs: AlgoInputs) -> None:
        super().__init__(cfg, inputs, critic=build_critic(inputs, cfg.critic_init))
        self.kl_ctl = build_kl_controller(cfg.kl_controller, cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)

    def extra_state(self) -> dict:
        return {**super().extra_state(), "kl_controller": dict(vars(self.kl_ctl))}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        vars(self.kl_ctl).update(state["kl_controller"])

    def advantages(self, exp: Experience) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rewards, advantages, returns), each (B, R)."""
        cfg, mask = self.cfg, exp.response_mask
        rewards = kl_penalised_token_rewards(exp.scores, kl_k1(exp.logprobs, exp.ref_logprobs), mask, self.kl_ctl.value)
        advantages, returns = gae(rewards, exp.values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask, all_reduce_sum=self.all_reduce_sum())
        return rewards, advantages, returns

    def minibatch_loss(self, exp: Experience, advantages: torch.Tensor, returns: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses on the rows ``idx``; ``advantages`` are the (whitened) ones of the whole rollout."""
        cfg = self.cfg
        batch, width = exp.rows(idx)
        p = batch["prompt_len"]
        mask = exp.response_mask[idx, :width]
        logprobs, entropy = response_logprobs(self.policy, batch, mask, cfg.sampling.temperature, entropy_grad=cfg.ent_coef > 0)
        values = self.critic(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[:, p - 1 : -1]
        pg = ppo_policy_loss(logprobs, exp.logprobs[idx, :width], advantages[idx, :width], mask, cfg.clip_range)
        vf_loss, vf_clipfrac = clipped_value_loss(values, exp.values[idx, :width], returns[idx, :width], mask, cfg.value_clip_range)
        entropy = masked_mean(entropy, mask)
        loss = pg.loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
        return {
            "loss": loss, "losses/policy_loss": pg.loss.detach(), "losses/value_loss": vf_loss.detach(),
            "losses/entropy": entropy.detach(), "losses/approx_kl": pg.approx_kl, "losses/clipfrac": pg.clipfrac,
            "losses/value_clipfrac": vf_clipfrac,
        }

    def iteration(self, exp: Experience) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rewards, advantages, returns = self.advantages(exp)
        stats = self.minibatch_updates(
            exp.response_mask.shape[0], cfg.ppo_epochs, cfg.minibatch_size, lambda idx: self.minibatch_loss(exp, advantages, returns, idx)
        )
        stats["rollout/non_score_reward"] = (rewards.sum(1) - exp.scores).mean()
        stats["rollout/kl_coef"] = torch.tensor(self.kl_ctl.value)
        stats["losses/explained_variance"] = explained_variance(exp.values, returns, exp.response_mask)
        if cfg.kl_controller == "adaptive":  # a fixed controller needs no host sync or all-reduce
            seq_kl = self.global_mean(((exp.logprobs - exp.ref_logprobs) * exp.response_mask).sum(1).mean())
            # rollout_batch_size is global (the ranks share it): the controller counts it once.
            self.kl_ctl.update(float(seq_kl), cfg.rollout_batch_size)
        return stats
