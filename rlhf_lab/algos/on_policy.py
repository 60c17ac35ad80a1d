"""Machinery every on-policy algorithm shares: models, the prompt loader, rollouts, the optimiser step.

A subclass (PPO, A2C, the critic-free policy gradients) reads as its paper does: it turns one
:class:`~rlhf_lab.rollout.Experience` into advantages and runs its update. Training uses Lightning's
manual optimisation; one ``training_step`` is one iteration (rollout, then update), so rollout and
update are visible phases rather than state hidden in a data loader.
"""

from __future__ import annotations

import copy
from typing import Optional

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from rlhf_lab.algos.inputs import AlgoInputs
from rlhf_lab.data import encode_prompt, pad_left
from rlhf_lab.errors import check_finite
from rlhf_lab.models.loading import disable_dropout
from rlhf_lab.policy import ModelPolicy
from rlhf_lab.resume import ResumableLoader, ResumableModule, length_grouped_order
from rlhf_lab.rollout import Experience, collect_experience
from rlhf_lab.sharding import ShardedTraining, whole


class CyclingSampler(Sampler[int]):
    """Yields ``num_samples`` indices: shuffled passes over the dataset, as many as needed. Given the
    items' ``lengths``, each pass is :func:`~rlhf_lab.resume.length_grouped_order` over batches of
    ``batch_size``: a rollout's prompts are then of similar length, so its left padding (prefilled and
    cached for every sample) is small."""

    def __init__(self, size: int, num_samples: int, seed: int, lengths: Optional[list[int]] = None, batch_size: int = 1) -> None:
        self.size, self.num_samples, self.seed = size, num_samples, seed
        self.lengths, self.batch_size = lengths, batch_size

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed)
        produced, passes = 0, 0
        while produced < self.num_samples:
            if self.lengths is not None:
                order = length_grouped_order(self.lengths, self.batch_size, self.seed, passes)
            else:
                order = torch.randperm(self.size, generator=generator).tolist()
            passes += 1
            for index in order[: self.num_samples - produced]:
                yield index
                produced += 1


class _Frozen:
    """Holds the frozen models outside the module tree: they stay out of checkpoints and optimisers."""

    def __init__(self, reference: nn.Module, reward) -> None:
        self.reference, self.reward = reference, reward
        reference.eval().requires_grad_(False)


def build_critic(inputs: AlgoInputs, critic_init: str):
    """A critic (backbone + scalar head) for actor-critic algorithms.

    ``critic_init="reward"`` starts from the learned reward model, with its normaliser folded into the
    head so the first values are on the scale of the (normalised) returns; a rule reward has no network,
    so the critic then starts from the policy like ``critic_init="policy"``.
    """
    from rlhf_lab.models.loading import load_value_model
    from rlhf_lab.rewards.function import LearnedReward

    if critic_init == "reward" and isinstance(inputs.reward, LearnedReward):
        critic = copy.deepcopy(inputs.reward.model).requires_grad_(True)  # the reward model itself stays frozen
        critic.fold_normaliser(inputs.reward.normaliser)
    else:
        critic = load_value_model(str(inputs.sft), inputs.dtype, key=f"critic initialisation {inputs.sft}")
    if inputs.lora is not None:
        from rlhf_lab.models.lora import add_value_adapters

        add_value_adapters(critic, inputs.lora)
    if inputs.gradient_checkpointing:
        from rlhf_lab.models.lora import enable_gradient_checkpointing

        enable_gradient_checkpointing(critic.model)
    return critic.train()


class OnPolicyModule(ShardedTraining, ResumableModule, pl.LightningModule):
    """Base of the on-policy algorithms; subclasses implement :meth:`iteration` (advantages + update).

    :attr policy: the trained causal LM (the pipeline saves it).
    :attr critic: a value model, or None for critic-free algorithms.
    """

    samples_per_prompt = 1
    """Responses sampled per prompt in a rollout; critic-free group baselines set it from their config."""
    values_in_rollout = True
    """Whether the rollout computes the critic's values; A2C, which updates once on fresh data, takes
    them from the forward of its update instead (the same weights: one critic forward, not two)."""

    def __init__(self, cfg, inputs: AlgoInputs, critic: nn.Module | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.cfg, self.inputs = cfg, inputs
        self.tokenizer = inputs.tokenizer
        self.policy = inputs.load_policy()
        self.critic = critic
        self.frozen = _Frozen(inputs.reference, inputs.reward)
        for model in (self.policy, self.critic):
            if model is not None:
                disable_dropout(model)
                model.train()
        self.generator: torch.Generator | None = None

    # --- data and devices ---------------------------------------------------------------------------

    def sharded_models(self) -> list[nn.Module]:
        return [m for m in (self.policy, self.critic) if m is not None]

    def shard_frozen(self, copy_sharded) -> None:
        reward = self.frozen.reward
        if isinstance(getattr(reward, "model", None), nn.Module):  # a learned reward; a rule has no weights
            reward = copy.copy(reward)
            reward.model = copy_sharded(reward.model)
        self.frozen = _Frozen(copy_sharded(self.frozen.reference), reward)

    def gradient_clip_norm(self) -> float:
        return self.cfg.max_grad_norm

    def train_dataloader(self) -> DataLoader:
        cfg, tok = self.cfg, self.tokenizer
        prompts = [encode_prompt(tok, p) for p in self.inputs.prompts]
        iterations = cfg.total_episodes // cfg.rollout_batch_size
        lengths = [len(p) for p in prompts] if cfg.group_by_length else None
        sampler = CyclingSampler(len(prompts), iterations * cfg.rollout_batch_size, self.inputs.seed, lengths, cfg.rollout_batch_size)

        def collate(items):
            ids, mask = pad_left(items, tok.pad_token_id)
            return {"prompt_ids": ids, "prompt_mask": mask}

        return self.resumable(ResumableLoader(prompts, cfg.rollout_batch_size, collate, lambda epoch: list(sampler), len(sampler)))

    def on_fit_start(self) -> None:
        self.partition_frozen()  # ZeRO-3 only; its engines place the partitions themselves
        if not getattr(self, "_frozen_partitioned", False):
            self.frozen.reference.to(self.device)
            self.frozen.reward.to(self.device)
        # One stream per rank: the same seed everywhere would make every rank sample the same responses.
        self.generator = torch.Generator(device=self.device).manual_seed(self.inputs.seed + self.global_rank)

    def on_train_start(self) -> None:
        # After the checkpoint is restored, whichever the strategy's order (FSDP restores after on_fit_start).
        self.restore_extra_state()

    def extra_state(self) -> dict:
        return {"generator": self.generator.get_state(), "rollouts": getattr(self, "_rollouts", 0)}

    def load_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._rollouts = state["rollouts"]

    def teardown(self, stage: str) -> None:
        # Lightning moves only the module tree back to the CPU after fit; the frozen models follow
        # (ZeRO-3's partitioned copies are dropped with the module).
        if getattr(self, "_frozen_partitioned", False):
            return
        self.frozen.reference.cpu()
        self.frozen.reward.to("cpu")

    def policy_handle(self) -> ModelPolicy:
        """The trained policy, for evaluation."""
        return ModelPolicy(self.policy, self.tokenizer)

    # --- phases -------------------------------------------------------------------------------------

    def rollout(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> Experience:
        """Sample with the current policy and gather log-probs, reference log-probs, scores (and values)."""
        return collect_experience(
            self.policy, self.frozen.reference, self.frozen.reward, prompt_ids, prompt_mask,
            tokenizer=self.tokenizer, sampling=self.cfg.sampling, samples_per_prompt=self.samples_per_prompt,
            critic=self.critic if self.values_in_rollout else None, missing_eos_penalty=self.cfg.missing_eos_penalty,
            generator=self.generator, lockstep=getattr(self, "_sharded", False),
        )

    def iteration(self, exp: Experience) -> dict[str, torch.Tensor]:
        """Advantages and update(s) on one experience batch; returns scalar diagnostics (tensors)."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        exp = self.rollout(batch["prompt_ids"], batch["prompt_mask"])
        stats = self.iteration(exp)
        self._rollouts = getattr(self, "_rollouts", 0) + 1
        # Lightning's self.log costs about a millisecond a call on the CPU (a tenth of a small step):
        # log only on the rollouts whose figures the Trainer writes (every log_every_n_steps-th, as it counts).
        every = self._trainer.log_every_n_steps if self._trainer is not None else 1
        if self._rollouts % every:
            return
        mask = exp.response_mask
        stats.update({
            "rollout/proxy_reward": exp.scores.mean(),
            "rollout/kl": ((exp.logprobs - exp.ref_logprobs) * mask).sum(1).mean(),
            "rollout/response_length": mask.sum(1).mean(),
            "rollout/eos_rate": exp.has_eos.float().mean(),
            **{f"rollout/{name}": values.mean() for name, values in exp.reward_details.items()},
        })
        # One host transfer for every figure of the iteration.
        names = list(stats)
        values = self.global_mean(torch.stack([torch.as_tensor(stats[n], dtype=torch.float32, device=self.device) for n in names])).tolist()
        self.log_dict(dict(zip(names, values)), batch_size=mask.shape[0])
        self.log("reward", values[names.index("rollout/proxy_reward")], prog_bar=True, logger=False, batch_size=mask.shape[0])

    # --- optimisation -------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.policy.parameters() if p.requires_grad]  # with LoRA: the adapters
        if self.critic is not None:
            params += [p for p in self.critic.parameters() if p.requires_grad]
        return params

    def configure_optimizers(self):
        groups = [{"params": list(self.policy.parameters()), "lr": self.cfg.lr}]
        if self.critic is not None:
            critic_lr = getattr(self.cfg, "critic_lr", None)
            groups.append({"params": [p for p in self.critic.parameters() if p.requires_grad], "lr": critic_lr or self.cfg.lr})
        from rlhf_lab.optim import adamw

        return adamw(groups, self.cfg.lr, eps=1e-5)  # weight decay 0: Adam, as in the references

    def optimise(self, loss: torch.Tensor) -> torch.Tensor:
        """zero_grad -> backward -> clip -> step; returns the gradient norm before clipping.

        One finiteness check covers the loss and the gradient norm (a finite loss can still give an
        infinite gradient, and stepping on it would poison the weights the next checkpoint saves).
        """
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        if self.uses_deepspeed:
            # DeepSpeed's engine computes the norm (over its partitions) and clips inside its step.
            check_finite(loss.detach(), "policy", self.global_step, self.inputs.checkpoint_dir)
            opt.step()
            grad_norm = torch.tensor(float(self.trainer.strategy.deepspeed_engine.get_global_grad_norm()), device=self.device)
            # Past the step, but before the next checkpoint: the run stops with the last good one kept.
            check_finite(grad_norm, "policy", self.global_step, self.inputs.checkpoint_dir, what="gradient norm")
            return grad_norm
        # On sharded parameters the norm is computed over every shard (whole() makes it a plain tensor).
        grad_norm = whole(torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.cfg.max_grad_norm))
        both = torch.stack([loss.detach().float(), grad_norm.float()])
        if not bool(torch.isfinite(both).all()):
            what = "loss" if not bool(torch.isfinite(both[0])) else "gradient norm"
            check_finite(both[0] if what == "loss" else both[1], "policy", self.global_step, self.inputs.checkpoint_dir, what=what)
        opt.step()
        return grad_norm

    def minibatch_updates(self, size: int, epochs: int, minibatch_size: int, loss_fn) -> dict[str, torch.Tensor]:
        """``epochs`` shuffled passes over this rank's ``size`` rows in minibatches, one optimiser step each.

        :param minibatch_size: rows per optimiser step over all ranks (each rank takes its share; the
            gradients are averaged over ranks, so a step sees the same number of rows on any number of ranks).
        :param loss_fn: ``loss_fn(row_indices) -> dict`` with ``"loss"`` and scalar diagnostics.
        :returns: each diagnostic (and ``losses/grad_norm``) averaged over all steps, as tensors.
        """
        minibatch_size = max(1, minibatch_size // self.world_size)
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for _ in range(epochs):
            order = torch.randperm(size, device=self.device, generator=self.generator)
            for start in range(0, size, minibatch_size):
                out = loss_fn(order[start : start + minibatch_size])
                out["losses/grad_norm"] = self.optimise(out.pop("loss"))
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + value.detach()
                count += 1
        return {key: value / count for key, value in sums.items()}

    # --- several ranks ------------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        """How many ranks train together (1 outside a Trainer)."""
        return self._trainer.world_size if self._trainer is not None else 1

    def all_reduce_sum(self):
        """A summing all-reduce over ranks when there are several, else None (statistics stay local)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return None
        return lambda tensor: trainer.strategy.reduce(tensor, reduce_op="sum")

    def global_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over all ranks, element-wise (the local value with one rank)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return value
        return trainer.strategy.reduce(value, reduce_op="mean")
