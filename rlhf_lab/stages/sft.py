"""Supervised fine-tuning: causal-LM loss on response tokens only (prompt tokens masked)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from rlhf_lab.data import collate_demonstrations, encode_prompt, encode_response
from rlhf_lab.errors import check_finite
from rlhf_lab.models.logits import logits_at
from rlhf_lab.resume import ResumableModule
from rlhf_lab.sharding import ShardedTraining


def check_converged(val_loss: float, vocab_size: int, lr: float) -> None:
    """Stop a diverged SFT at its end: a held-out loss more than a nat above ``log(vocab)`` is worse
    than guessing every token uniformly, which no model that learned anything scores."""
    from rlhf_lab.errors import NonFiniteLossError

    uniform = math.log(vocab_size)
    if not math.isfinite(val_loss) or val_loss > uniform + 1.0:
        raise NonFiniteLossError(
            f"stage 'sft' diverged: its held-out loss is {val_loss:.4g} nats per token, above the {uniform:.2f} of a uniform "
            f"guess over the {vocab_size}-token vocabulary; lower sft.lr (now {lr:g})"
        )


def tokenize_demonstrations(tokenizer, pairs: list[tuple[str, str]], limits=None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + EOS) per demonstration; with :class:`~rlhf_lab.lengths.LengthLimits`
    (``data.truncate=true``), a response too long for the positions left after its prompt is cut from
    the right (and so ends without EOS)."""
    out = []
    for p, r in pairs:
        prompt, response = encode_prompt(tokenizer, p), encode_response(tokenizer, r)
        if limits is not None:
            response = response[: max(1, limits.response_limit(len(prompt)))]
        out.append((prompt, response))
    return out


def demonstration_loader(examples, pad_id: int, batch_size: int, shuffle: bool, seed: int, group_by_length: bool = False) -> DataLoader:
    """Batches of :func:`~rlhf_lab.data.collate_demonstrations`; shuffled with ``group_by_length``,
    each batch of demonstrations of similar length (:func:`~rlhf_lab.resume.length_grouped_order`)."""
    from rlhf_lab.resume import shuffled_loader

    def collate(items):
        return collate_demonstrations([p for p, _ in items], [r for _, r in items], pad_id)

    lengths = [len(p) + len(r) for p, r in examples] if group_by_length else None
    return shuffled_loader(examples, batch_size, collate, shuffle, seed, lengths=lengths)


def response_nll(model, batch: dict) -> torch.Tensor:
    """Negative log-likelihood (N,) of every response token of a
    :func:`~rlhf_lab.data.collate_demonstrations` batch, in the batch's order; only these positions'
    logits are computed."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "position_ids")}
    logits = logits_at(model, inputs, batch["target_rows"], batch["target_cols"])
    return torch.nn.functional.cross_entropy(logits.float(), batch["targets"], reduction="none")


class SFTModule(ShardedTraining, ResumableModule, pl.LightningModule):
    """Fine-tunes a causal LM on demonstrations; logs ``sft/loss``, ``sft/val_loss``, ``sft/val_perplexity``."""

    def __init__(self, model, lr: float, weight_decay: float, checkpoint_dir=None, train_loader=None, val_loader=None) -> None:
        super().__init__()
        self.model = model.train()  # from_pretrained returns eval mode
        self.lr, self.weight_decay = lr, weight_decay
        self.checkpoint_dir = checkpoint_dir
        self.train_loader, self.val_loader = train_loader, val_loader
        self._val_nll, self._val_tokens = 0.0, 0

    def train_dataloader(self):
        return self.resumable(self.train_loader)

    def val_dataloader(self):
        return self.val_loader if self.val_loader is not None else []

    def training_step(self, batch, batch_idx):
        # The mean over the batch's response tokens, as before: a long response weighs by its length.
        loss = response_nll(self.model, batch).mean()
        check_finite(loss, "sft", self.global_step, self.checkpoint_dir)
        self.log("sft/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_nll, self._val_tokens = 0.0, 0

    def validation_step(self, batch, batch_idx):
        nll = response_nll(self.model, batch)
        self._val_nll += float(nll.sum())
        self._val_tokens += nll.numel()

    def on_validation_epoch_end(self) -> None:
        # Token-weighted over the whole held-out set, not a mean of batch means.
        loss = self._val_nll / max(self._val_tokens, 1)
        self.log_dict({"sft/val_loss": loss, "sft/val_perplexity": math.exp(loss) if loss < 709.0 else math.inf})

    def configure_optimizers(self):
        from rlhf_lab.optim import adamw

        return adamw(self.model.parameters(), self.lr, weight_decay=self.weight_decay)
