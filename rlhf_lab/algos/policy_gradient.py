"""Critic-free policy gradients: REINFORCE with a moving-average baseline, RLOO and GRPO.

They share the rollout engine and differ only in the baseline and in where the KL penalty goes
(:mod:`rlhf_lab.algos.policy_gradient_config` sets each one's defaults). One iteration:

1. rollout: ``samples_per_prompt`` responses per prompt (consecutive rows share a group id), their
   log-probs, the reference's log-probs and the reward function's scores;
2. sequence rewards: the score, minus ``kl_coef * sum_t k1`` when ``kl_penalty=reward``;
3. advantages, one per sequence and the same on each of its tokens:
   REINFORCE ``r - b`` with ``b`` a moving average of past batch means (Williams 1992);
   RLOO ``r_i - mean_{j != i} r_j`` within the prompt's group (Ahmadian et al. 2024);
   GRPO ``(r_i - mean(r)) / std(r)`` within the group (Shao et al. 2024);
4. update: ``update_epochs`` passes over minibatches of the surrogate ``-A * ratio`` (clipped once a
   minibatch is off-policy; with one pass and one minibatch it is exactly REINFORCE's ``-A * log pi``),
   plus ``kl_coef * k3`` per token when ``kl_penalty=loss``.
"""

from __future__ import annotations

import torch

from rlhf_lab.algos.inputs import AlgoInputs
from rlhf_lab.algos.on_policy import OnPolicyModule
from rlhf_lab.algos.policy_gradient_config import PolicyGradientConfig
from rlhf_lab.data import response_logprobs
from rlhf_lab.ops.advantages import broadcast_to_tokens, ema_baseline, grpo_advantages, rloo_advantages
from rlhf_lab.ops.kl import kl_k1, kl_k3
from rlhf_lab.ops.losses import ppo_policy_loss
from rlhf_lab.ops.masked import masked_mean
from rlhf_lab.ops.rewards import kl_penalised_sequence_rewards
from rlhf_lab.rollout import Experience


class PolicyGradientModule(OnPolicyModule):
    """REINFORCE / RLOO / GRPO: no critic, a baseline from the other samples (or from the past)."""

    def __init__(self, cfg: PolicyGradientConfig, inputs: AlgoInputs) -> None:
        super().__init__(cfg, inputs)
        self.samples_per_prompt = cfg.samples_per_prompt
        self.baseline: float | None = None

    def extra_state(self) -> dict:
        return {**super().extra_state(), "baseline": self.baseline}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.baseline = state["baseline"]

    def sequence_rewards(self, exp: Experience) -> torch.Tensor:
        if self.cfg.kl_penalty == "reward":
            return kl_penalised_sequence_rewards(exp.scores, kl_k1(exp.logprobs, exp.ref_logprobs), exp.response_mask, self.cfg.kl_coef)
        return exp.scores

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """(B,) one advantage per sequence."""
        cfg = self.cfg
        if cfg.baseline == "leave_one_out":
            return rloo_advantages(rewards, cfg.samples_per_prompt)
        if cfg.baseline == "group":
            return grpo_advantages(rewards, cfg.samples_per_prompt, scale_by_std=cfg.scale_by_std)
        # The baseline predates this batch, so the advantage stays an unbiased gradient estimate;
        # only the very first batch, having no past, is baselined by its own mean.
        batch_mean = float(self.global_mean(rewards.mean()))
        advantages = rewards - (batch_mean if self.baseline is None else self.baseline)
        self.baseline = ema_baseline(self.baseline, batch_mean, cfg.baseline_decay)
        return advantages

    def minibatch_loss(self, exp: Experience, advantages: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        batch, width = exp.rows(idx)
        mask = exp.response_mask[idx, :width]
        logprobs = response_logprobs(self.policy, batch, mask, cfg.sampling.temperature)
        pg = ppo_policy_loss(logprobs, exp.logprobs[idx, :width], advantages[idx, :width], mask, cfg.clip_range)
        out = {"losses/policy_loss": pg.loss.detach(), "losses/approx_kl": pg.approx_kl, "losses/clipfrac": pg.clipfrac}
        loss = pg.loss
        if cfg.kl_penalty == "loss":
            # Padding zeroed first: k3 exponentiates, and a pad token's log-prob can be below -88.
            kl = masked_mean(kl_k3(logprobs * mask, exp.ref_logprobs[idx, :width]), mask)
            loss = loss + cfg.kl_coef * kl
            out["losses/kl_loss"] = kl.detach()
        out["loss"] = loss
        return out

    def iteration(self, exp: Experience) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rewards = self.sequence_rewards(exp)
        advantages = broadcast_to_tokens(self.advantages(rewards), exp.response_mask)
        size = exp.response_mask.shape[0]
        stats = self.minibatch_updates(size, cfg.update_epochs, min(cfg.minibatch_size, size * self.world_size), lambda idx: self.minibatch_loss(exp, advantages, idx))
        stats["rollout/sequence_reward"] = rewards.mean()
        return stats
