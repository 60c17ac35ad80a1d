"""Direct preference optimisation and its family: DPO, conservative DPO, IPO, SimPO.

Offline: no sampling, no reward model. The data are the preference records of the run (the simulated
annotators' or a dataset's); a K-wise ranking gives all its K-choose-2 pairs. One training step:

1. chosen and rejected responses of a batch of pairs go through the policy in one concatenated
   forward, each as one right-padded sequence with its prompt, only the response positions
   projected onto the vocabulary; each response's log-prob is summed over its tokens (averaged for
   SimPO); with ``algo.group_by_length`` a batch holds pairs of similar length;
2. the reference's log-probs were computed once for every pair before training (the reference is
   frozen, so recomputing them each step would only cost time);
3. the loss named by ``algo.loss`` is a small pure function of those log-probs
   (:mod:`rlhf_lab.ops.preference`), chosen from :data:`LOSSES`;
4. logged: ``rewards/chosen``, ``rewards/rejected`` (implicit rewards ``beta * (log pi - log ref)``),
   ``rewards/margins``, ``rewards/accuracies``; the same on held-out pairs under ``val/``.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from rlhf_lab.algos.dpo_config import DPOConfig
from rlhf_lab.algos.inputs import AlgoInputs
from rlhf_lab.data import collate_demonstrations, encode_prompt, record_response_ids
from rlhf_lab.errors import DataError, check_finite
from rlhf_lab.ops.preference import dpo_sigmoid_loss, implicit_rewards, ipo_loss, simpo_loss
from rlhf_lab.models.logits import logits_at
from rlhf_lab.policy import ModelPolicy
from rlhf_lab.resume import ResumableModule, shuffled_loader
from rlhf_lab.sharding import ShardedTraining


@dataclass
class PairLogps:
    """Summed log-probs and token counts of the chosen and rejected responses of a batch of pairs."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor


def _sigmoid(cfg, pol: PairLogps, ref: PairLogps):
    return dpo_sigmoid_loss(pol.chosen, pol.rejected, ref.chosen, ref.rejected, cfg.beta)


def _cdpo(cfg, pol: PairLogps, ref: PairLogps):
    return dpo_sigmoid_loss(pol.chosen, pol.rejected, ref.chosen, ref.rejected, cfg.beta, cfg.label_smoothing)


def _ipo(cfg, pol: PairLogps, ref: PairLogps):
    # Per-token averages, as TRL does: IPO's squared target 1/(2 beta) would otherwise pull long and
    # short responses to the same total margin.
    return ipo_loss(pol.chosen / pol.chosen_len, pol.rejected / pol.rejected_len, ref.chosen / ref.chosen_len, ref.rejected / ref.rejected_len, cfg.beta)


def _simpo(cfg, pol: PairLogps, ref: PairLogps):
    return simpo_loss(pol.chosen / pol.chosen_len, pol.rejected / pol.rejected_len, cfg.beta, cfg.simpo_gamma)


LOSSES = {"sigmoid": _sigmoid, "cdpo": _cdpo, "ipo": _ipo, "simpo": _simpo}
"""``algo.loss`` -> per-pair loss of (config, policy log-probs, reference log-probs)."""


def preference_pairs(records, tokenizer) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, chosen ids, rejected ids) for every ranked pair; identical responses carry no signal."""
    pairs = []
    for record in records:
        prompt = encode_prompt(tokenizer, record.prompt)
        responses = record_response_ids(tokenizer, record)
        for better, worse in record.preference_pairs():
            if responses[better] != responses[worse]:
                pairs.append((prompt, responses[better], responses[worse]))
    return pairs


def collate_concatenated(pairs, pad_id: int) -> dict:
    """One batch of 2B rows: the B chosen responses, then the B rejected ones, each after its prompt
    (:func:`~rlhf_lab.data.collate_demonstrations`)."""
    prompts = [p for p, _, _ in pairs] * 2
    responses = [c for _, c, _ in pairs] + [r for _, _, r in pairs]
    return collate_demonstrations(prompts, responses, pad_id)


def sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob, token count) of each row's response; only the response positions' logits
    are computed."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids")}
    logits = logits_at(model, inputs, batch["target_rows"], batch["target_cols"])
    logp = -torch.nn.functional.cross_entropy(logits.float(), batch["targets"], reduction="none")
    rows = batch["input_ids"].shape[0]
    summed = torch.zeros(rows, dtype=logp.dtype, device=logp.device).index_add(0, batch["target_rows"], logp)
    return summed, torch.bincount(batch["target_rows"], minlength=rows)


def split_pairs(logps: torch.Tensor, lengths: torch.Tensor) -> PairLogps:
    half = logps.shape[0] // 2
    return PairLogps(logps[:half], logps[half:], lengths[:half].float(), lengths[half:].float())


class DPOModule(ShardedTraining, ResumableModule, pl.LightningModule):
    """The DPO family on preference pairs, against a frozen reference."""

    def __init__(self, cfg: DPOConfig, inputs: AlgoInputs) -> None:
        super().__init__()
        from rlhf_lab.records import read_jsonl
        from rlhf_lab.models.loading import disable_dropout

        self.cfg, self.inputs, self.tokenizer = cfg, inputs, inputs.tokenizer
        self.policy = inputs.load_policy().train()
        disable_dropout(self.policy)
        self.reference = [inputs.reference.eval().requires_grad_(False)]  # a list keeps it out of the module tree
        self.pairs = {
            split: preference_pairs(read_jsonl(inputs.preferences / f"{split}.jsonl"), self.tokenizer) for split in ("train", "heldout")
        }
        if not self.pairs["train"]:
            raise DataError(f"{inputs.preferences / 'train.jsonl'}: no preference pair with two different responses")
        self.ref_logps: dict[str, torch.Tensor] = {}
        self.max_epochs, self.max_steps = cfg.epochs, cfg.max_steps

    # --- data -------------------------------------------------------------------------------------

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        pairs, pad = self.pairs[split], self.tokenizer.pad_token_id

        def collate(indices):
            batch = collate_concatenated([pairs[i] for i in indices], pad)
            batch["index"] = torch.tensor(indices)
            return batch

        lengths = [len(p) + max(len(c), len(r)) for p, c, r in pairs] if self.cfg.group_by_length else None
        return shuffled_loader(range(len(pairs)), self.cfg.batch_size, collate, shuffle, self.inputs.seed, lengths=lengths)

    def train_dataloader(self) -> DataLoader:
        return self.resumable(self._loader("train", shuffle=True))

    def val_dataloader(self):
        return self._loader("heldout", shuffle=False) if self.pairs["heldout"] else []

    @torch.no_grad()
    def on_fit_start(self) -> None:
        """Reference log-probs of every pair, once: (summed log-probs, lengths) of chosen rows then rejected rows."""
        reference = self.reference[0].to(self.device)
        for split in ("train", "heldout"):
            if not self.pairs[split]:
                continue
            out = torch.zeros(len(self.pairs[split]), 4, device=self.device)
            for batch in self._loader(split, shuffle=False):
                batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
                ref = split_pairs(*sequence_logps(reference, batch))
                out[batch["index"]] = torch.stack([ref.chosen, ref.rejected, ref.chosen_len, ref.rejected_len], dim=1)
            self.ref_logps[split] = out

    def teardown(self, stage: str) -> None:
        self.reference[0].cpu()

    def policy_handle(self) -> ModelPolicy:
        return ModelPolicy(self.policy, self.tokenizer)

    # --- loss ---------------------------------------------------------------------------------------

    def pair_loss(self, batch: dict, split: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss over the batch's pairs, and the implicit-reward diagnostics."""
        cfg = self.cfg
        policy = split_pairs(*sequence_logps(self.policy, batch))
        r = self.ref_logps[split][batch["index"]]
        ref = PairLogps(r[:, 0], r[:, 1], r[:, 2], r[:, 3])
        loss = LOSSES[cfg.loss](cfg, policy, ref).mean()
        with torch.no_grad():
            if cfg.loss == "simpo":  # reference-free: its implicit reward is the scaled average log-prob
                chosen, rejected = cfg.beta * policy.chosen / policy.chosen_len, cfg.beta * policy.rejected / policy.rejected_len
            else:
                chosen, rejected = implicit_rewards(policy.chosen, ref.chosen, cfg.beta), implicit_rewards(policy.rejected, ref.rejected, cfg.beta)
            stats = {
                "rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
                "rewards/margins": (chosen - rejected).mean(), "rewards/accuracies": (chosen > rejected).float().mean(),
                "logps/chosen": policy.chosen.mean(), "logps/rejected": policy.rejected.mean(),
            }
        return loss, stats

    def training_step(self, batch, batch_idx):
        loss, stats = self.pair_loss(batch, "train")
        check_finite(loss, "policy", self.global_step, self.inputs.checkpoint_dir)
        size = batch["index"].numel()
        self.log("losses/dpo", loss, prog_bar=True, batch_size=size, sync_dist=True)
        self.log_dict(stats, batch_size=size, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, stats = self.pair_loss(batch, "heldout")
        size = batch["index"].numel()
        self.log("val/losses/dpo", loss, batch_size=size)
        self.log_dict({f"val/{k}": v for k, v in stats.items()}, batch_size=size)

    def configure_optimizers(self):
        from rlhf_lab.optim import adamw

        return adamw(self.policy.parameters(), self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def sharded_models(self) -> list:
        return [self.policy]  # the reference is used once, whole, before training (on_fit_start)

    def gradient_clip_norm(self) -> float:
        return self.cfg.max_grad_norm

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if self.uses_deepspeed:  # its engine clips, to gradient_clip_norm()
            return
        if getattr(self, "_sharded", False):  # Lightning's clipping refuses sharded models; torch's spans the shards
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
            return
        self.clip_gradients(optimizer, gradient_clip_val=self.cfg.max_grad_norm, gradient_clip_algorithm="norm")
