"""PPO for language models from a learned reward, as in Ziegler et al. 2019 / Ouyang et al. 2022.

Follows the order of "The N Implementation Details of RLHF with PPO" (Huang et al. 2024); see
docs/algorithms/ppo.md for the numbered list. One training step of this module is one PPO iteration:

1. rollout: sample responses to a batch of prompts with the current policy (KV cache, temperature,
   top-k/top-p), cut at EOS; score them with the frozen reward model (normalised on SFT samples,
   with a penalty if a response has no EOS); compute log-probs of the policy and the frozen reference,
   and the critic's values;
2. rewards: a per-token penalty ``-kl_coef * (logp - ref_logp)`` plus the score on the last token;
3. advantages: GAE(gamma, lambda), whitened over the batch;
4. update: ``ppo_epochs`` passes over shuffled minibatches with the clipped surrogate, the clipped
   value loss and an entropy bonus; manual optimisation with gradient clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from rlhf_lab.algos.context import AlgoContext
from rlhf_lab.algos.kl_control import build_kl_controller
from rlhf_lab.algos.ppo_config import PPOConfig
from rlhf_lab.data import encode_prompt, join, pad_left, response_logits
from rlhf_lab.errors import check_finite
from rlhf_lab.ops.advantages import gae
from rlhf_lab.ops.kl import kl_k1
from rlhf_lab.ops.losses import clipped_value_loss, explained_variance, ppo_policy_loss
from rlhf_lab.ops.masked import masked_mean, masked_whiten
from rlhf_lab.ops.sequence import entropy_from_logits, token_logprobs
from rlhf_lab.rollout import generate


@dataclass
class Rollout:
    """One batch of experience; every (B, R) tensor is aligned with the response tokens."""

    batch: dict
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor
    """(B,) normalised reward-model scores, after the missing-EOS penalty."""
    has_eos: torch.Tensor


def disable_dropout(model: nn.Module) -> None:
    """Dropout would make the rollout's log-probs differ from the update's (Huang et al., detail 4)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class CyclingSampler(Sampler[int]):
    """Yields ``num_samples`` indices: shuffled passes over the dataset, as many as needed."""

    def __init__(self, size: int, num_samples: int, seed: int) -> None:
        self.size, self.num_samples, self.seed = size, num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        produced = 0
        while produced < self.num_samples:
            for index in torch.randperm(self.size, generator=generator).tolist()[: self.num_samples - produced]:
                yield index
                produced += 1


class _Frozen:
    """Holds the frozen models outside the module tree: they stay out of checkpoints and optimisers."""

    def __init__(self, reference: nn.Module, reward: nn.Module) -> None:
        self.reference, self.reward = reference, reward
        for model in (reference, reward):
            model.eval().requires_grad_(False)


class PPOModule(pl.LightningModule):
    """PPO with a frozen reference policy, a frozen reward model and a learned critic."""

    requires_reward_model = True

    def __init__(self, cfg: PPOConfig, context: AlgoContext) -> None:
        super().__init__()
        from rlhf_lab.models.loading import load_policy, load_value_model

        self.automatic_optimization = False
        self.cfg, self.context = cfg, context
        self.tokenizer = context.tokenizer
        self.policy = load_policy(str(context.policy_path), context.dtype, key=f"policy {context.policy_path}")
        critic_source = context.reward_path if cfg.critic_init == "reward" else context.policy_path
        self.critic = load_value_model(str(critic_source), context.dtype, key=f"critic initialisation {critic_source}")
        self.frozen = _Frozen(
            load_policy(str(context.policy_path), context.dtype, key=f"policy {context.policy_path}"),
            load_value_model(str(context.reward_path), context.dtype, key=f"reward model {context.reward_path}"),
        )
        for model in (self.policy, self.critic, self.frozen.reference, self.frozen.reward):
            disable_dropout(model)
        self.policy.train()
        self.critic.train()
        self.normaliser = context.normaliser
        self.kl_ctl = build_kl_controller(cfg.kl_controller, cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.generator: torch.Generator | None = None

    # --- data -------------------------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        cfg, tok = self.cfg, self.tokenizer
        prompts = [encode_prompt(tok, p) for p in self.context.train_prompts]
        iterations = cfg.total_episodes // cfg.rollout_batch_size
        sampler = CyclingSampler(len(prompts), iterations * cfg.rollout_batch_size, self.context.seed)

        def collate(items):
            ids, mask = pad_left(items, tok.pad_token_id)
            return {"prompt_ids": ids, "prompt_mask": mask}

        return DataLoader(prompts, batch_size=cfg.rollout_batch_size, sampler=sampler, collate_fn=collate)

    def on_fit_start(self) -> None:
        self.frozen.reference.to(self.device)
        self.frozen.reward.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.context.seed)

    def teardown(self, stage: str) -> None:
        # Lightning moves only the module tree back to the CPU after fit; the frozen models follow.
        self.frozen.reference.cpu()
        self.frozen.reward.cpu()

    def configure_optimizers(self):
        cfg = self.cfg
        return torch.optim.Adam(
            [
                {"params": self.policy.parameters(), "lr": cfg.lr},
                {"params": self.critic.parameters(), "lr": cfg.lr if cfg.critic_lr is None else cfg.critic_lr},
            ],
            eps=1e-5,
        )

    # --- phase 1-3: rollout ------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Rollout:
        cfg, tok, s = self.cfg, self.tokenizer, self.cfg.sampling
        self.policy.eval()
        gen = generate(
            self.policy, prompt_ids, prompt_mask,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=s.max_new_tokens,
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=self.generator,
        )
        self.policy.train()
        batch = join(prompt_ids, prompt_mask, gen.response_ids, gen.response_mask)
        mask = gen.response_mask.float()
        p = batch["prompt_len"]
        logprobs = token_logprobs(response_logits(self.policy, batch, s.temperature), gen.response_ids)
        ref_logprobs = token_logprobs(response_logits(self.frozen.reference, batch, s.temperature), gen.response_ids)
        values = self.critic(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[:, p - 1 : -1]
        raw_scores = self.frozen.reward.sequence_scores(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        scores = self.normaliser(raw_scores)
        if cfg.missing_eos_penalty is not None:
            scores = torch.where(gen.has_eos, scores, scores - cfg.missing_eos_penalty)

        kl = kl_k1(logprobs, ref_logprobs) * mask
        rewards = -self.kl_ctl.value * kl
        last = (mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return Rollout(batch, mask, logprobs, ref_logprobs, values * mask, rewards, advantages, returns, scores, gen.has_eos)

    # --- phase 4: update ---------------------------------------------------------------------------

    def minibatch_loss(self, rollout: Rollout, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses on the rows ``idx`` of a rollout; the advantages used are the rollout's (whitened) ones."""
        cfg = self.cfg
        batch = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in rollout.batch.items()}
        p = batch["prompt_len"]
        mask = rollout.response_mask[idx]
        logits = response_logits(self.policy, batch, cfg.sampling.temperature)
        logprobs = token_logprobs(logits, batch["input_ids"][:, p:])
        values = self.critic(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[:, p - 1 : -1]
        pg = ppo_policy_loss(logprobs, rollout.logprobs[idx], rollout.advantages[idx], mask, cfg.clip_range)
        vf_loss, vf_clipfrac = clipped_value_loss(values, rollout.values[idx], rollout.returns[idx], mask, cfg.value_clip_range)
        entropy = masked_mean(entropy_from_logits(logits), mask)
        loss = pg.loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
        return {
            "loss": loss, "losses/policy_loss": pg.loss.detach(), "losses/value_loss": vf_loss.detach(),
            "losses/entropy": entropy.detach(), "losses/approx_kl": pg.approx_kl, "losses/clipfrac": pg.clipfrac,
            "losses/value_clipfrac": vf_clipfrac,
        }

    def _grad_norm(self) -> torch.Tensor:
        norms = [torch.linalg.vector_norm(p.grad) for p in self.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

    def update(self, rollout: Rollout) -> dict[str, float]:
        cfg = self.cfg
        opt = self.optimizers()
        size = rollout.response_mask.shape[0]
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(size, device=self.device, generator=self.generator)
            for start in range(0, size, cfg.minibatch_size):
                out = self.minibatch_loss(rollout, order[start : start + cfg.minibatch_size])
                check_finite(out["loss"], "policy", self.global_step, self.context.checkpoint_dir)
                opt.zero_grad()
                self.manual_backward(out["loss"])
                # A finite loss can still give an infinite gradient; stepping on it would poison the
                # weights that the next checkpoint saves.
                check_finite(self._grad_norm(), "policy", self.global_step, self.context.checkpoint_dir, what="gradient norm")
                self.clip_gradients(opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
                opt.step()
                for key, value in out.items():
                    if key != "loss":
                        sums[key] = sums.get(key, 0.0) + float(value)
                count += 1
        return {key: value / count for key, value in sums.items()}

    def training_step(self, batch, batch_idx):
        rollout = self.rollout(batch["prompt_ids"], batch["prompt_mask"])
        stats = self.update(rollout)
        mask = rollout.response_mask
        seq_kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1).mean()
        stats.update({
            "rollout/proxy_reward": float(rollout.scores.mean()),
            "rollout/kl": float(seq_kl),
            "rollout/non_score_reward": float((rollout.rewards.sum(1) - rollout.scores).mean()),
            "rollout/response_length": float(mask.sum(1).mean()),
            "rollout/eos_rate": float(rollout.has_eos.float().mean()),
            "rollout/kl_coef": self.kl_ctl.value,
            "losses/explained_variance": float(explained_variance(rollout.values, rollout.returns, mask)),
        })
        self.kl_ctl.update(float(seq_kl), self.cfg.rollout_batch_size)
        self.log_dict(stats, batch_size=mask.shape[0])
        self.log("reward", stats["rollout/proxy_reward"], prog_bar=True, logger=False, batch_size=mask.shape[0])
