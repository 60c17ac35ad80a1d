"""Reward-model training: a scalar-head model fitted to preference records by a reward objective."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from rlhf_lab.errors import check_finite
from rlhf_lab.records import PreferenceRecord
from rlhf_lab.resume import ResumableModule
from rlhf_lab.sharding import ShardedTraining


def record_loader(records: list[PreferenceRecord], objective, tokenizer, batch_size: int, shuffle: bool, seed: int,
                  share_prompt: bool | None = None) -> DataLoader:
    """Batches of records for ``objective``; every text is tokenised once here, not once per epoch.
    ``share_prompt`` overrides the objective's ``reward.share_prompt`` (see :func:`shares_prompt`)."""
    from dataclasses import replace

    from rlhf_lab.data import encode_prompt, record_response_ids
    from rlhf_lab.resume import shuffled_loader

    records = [replace(r, response_ids=record_response_ids(tokenizer, r)) for r in records]
    prompt_ids = {p: encode_prompt(tokenizer, p) for p in {r.prompt for r in records}}
    return shuffled_loader(records, batch_size, lambda items: objective.collate(items, tokenizer, prompt_ids, share_prompt), shuffle, seed)


def shares_prompt(objective, model) -> bool:
    """Whether reward-model batches put each record's prompt once before all its responses: asked for
    by ``reward.share_prompt`` and possible for ``model`` (a :class:`ValueModel`); where it is not
    (flash-attention, sliding-window layers), one row per response, with a warning."""
    import logging

    from rlhf_lab.models.value_model import custom_mask_problem

    if not getattr(objective.cfg, "share_prompt", False):
        return False
    problem = custom_mask_problem(model.model)
    if problem is not None:
        logging.getLogger(__name__).warning("reward.share_prompt: the reward model cannot share prompts, %s; one row per response", problem)
    return problem is None


class RewardModule(ShardedTraining, ResumableModule, pl.LightningModule):
    """Trains a :class:`~rlhf_lab.models.value_model.ValueModel`; logs ``reward/loss`` and ``reward/accuracy``."""

    def __init__(self, model, objective, lr: float, weight_decay: float, checkpoint_dir=None, train_loader=None, val_loader=None) -> None:
        super().__init__()
        self.model, self.objective = model.train(), objective
        self.lr, self.weight_decay = lr, weight_decay
        self.checkpoint_dir = checkpoint_dir
        self.train_loader, self.val_loader = train_loader, val_loader

    def train_dataloader(self):
        return self.resumable(self.train_loader)

    def val_dataloader(self):
        return self.val_loader if self.val_loader is not None else []

    def _scores(self, batch):
        return self.objective.batch_scores(self.model, batch)

    def training_step(self, batch, batch_idx):
        scores = self._scores(batch)
        loss = self.objective.loss(scores, batch)
        check_finite(loss, "reward_model", self.global_step, self.checkpoint_dir)
        correct, total = self.objective.pair_accuracy(scores.detach(), batch)
        self.log("reward/loss", loss, prog_bar=True, batch_size=scores.shape[0], sync_dist=True)
        if total:  # (a batch of equal ratings has no pair; a collective here could wait for a rank that logs nothing)
            self.log("reward/train_accuracy", correct / total, batch_size=total)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._correct = self._total = 0

    def validation_step(self, batch, batch_idx):
        correct, total = self.objective.pair_accuracy(self._scores(batch), batch)
        self._correct += correct
        self._total += total

    def on_validation_epoch_end(self) -> None:
        # Pair-weighted over the whole held-out set.
        self.log("reward/accuracy", self._correct / max(self._total, 1))

    def configure_optimizers(self):
        from rlhf_lab.optim import adamw

        return adamw(self.model.parameters(), self.lr, weight_decay=self.weight_decay)


class TrainOnlyRewardModule(RewardModule):
    """A :class:`RewardModule` with no held-out set and so no validation loop (an ensemble that active
    selection fits to the labels so far: the held-out records are collected after the training ones)."""

    val_dataloader = pl.LightningModule.val_dataloader
    validation_step = pl.LightningModule.validation_step
    on_validation_epoch_start = pl.LightningModule.on_validation_epoch_start
    on_validation_epoch_end = pl.LightningModule.on_validation_epoch_end


@torch.no_grad()
def score_records(model, tokenizer, records: list[PreferenceRecord], batch_size: int = 128) -> torch.Tensor:
    """Raw reward-model scores of every response of every record, on the token ids they were trained on."""
    from rlhf_lab.data import batched_pairs, record_response_ids

    was_training = model.training
    model.eval()
    prompts = [r.prompt for r in records for _ in r.responses]
    responses = [ids for r in records for ids in record_response_ids(tokenizer, r)]
    device = next(model.parameters()).device
    out = [
        model.sequence_scores(b["input_ids"], b["attention_mask"], b["position_ids"]).cpu()
        for b in batched_pairs(tokenizer, prompts, responses, batch_size, device)
    ]
    model.train(was_training)
    return torch.cat(out)
