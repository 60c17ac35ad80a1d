"""The reward-objective contract and the config fields every reward model shares."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab.data import collate_pairs, encode_prompt, encode_response
from rlhf_lab.feedback.records import PreferenceRecord


@dataclass
class RewardConfig:
    """Fields shared by reward-model schemas."""

    name: str = ""
    lr: float = 1e-3
    epochs: int = 4
    batch_size: int = 32
    """Preference records per batch (each response in a record is forwarded once)."""
    weight_decay: float = 0.0
    init_from_sft: bool = True
    """Start the backbone from the SFT policy (Ouyang et al. 2022) instead of the base model."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"reward needs lr > 0, epochs >= 1, batch_size >= 1; got lr={self.lr}, epochs={self.epochs}, batch_size={self.batch_size}")


class RewardObjective:
    """Turns records into batches and sequence scores into a loss.

    Subclasses set ``feedback_kind`` ("ranking" or "rating") and implement :meth:`loss`.
    """

    feedback_kind: str = "ranking"

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg

    def collate(self, records: list[PreferenceRecord], tokenizer) -> dict:
        """Flatten every response of every record into one batch, plus the preference pairs between them.

        Adds ``pair_better``/``pair_worse`` (indices into the flattened responses) and ``targets``
        (the records' scores where present, else zeros).
        """
        prompts, responses, better, worse, targets = [], [], [], [], []
        for record in records:
            offset = len(responses)
            prompt_ids = encode_prompt(tokenizer, record.prompt)
            for i, response in enumerate(record.responses):
                prompts.append(prompt_ids)
                responses.append(encode_response(tokenizer, response))
                targets.append(record.scores[i] if record.scores is not None else 0.0)
            for b, w in record.preference_pairs():
                better.append(offset + b)
                worse.append(offset + w)
        batch = collate_pairs(prompts, responses, tokenizer.pad_token_id)
        batch["pair_better"] = torch.tensor(better, dtype=torch.long)
        batch["pair_worse"] = torch.tensor(worse, dtype=torch.long)
        batch["targets"] = torch.tensor(targets, dtype=torch.float)
        return batch

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def pair_accuracy(scores: torch.Tensor, batch: dict) -> tuple[int, int]:
        """(correct, total) over the batch's preference pairs; a tie in score counts as wrong."""
        b, w = batch["pair_better"], batch["pair_worse"]
        return int((scores[b] > scores[w]).sum()), int(b.numel())
