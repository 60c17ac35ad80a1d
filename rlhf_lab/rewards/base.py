"""The reward-objective contract: how a learned reward model is trained on preference records.

A reward component (``reward=<name>``) declares what it ``consumes`` and turns that into a run-time
:class:`~rlhf_lab.rewards.function.RewardFunction`. A learned reward model consumes the
``reward_model`` artifact, which the pipeline trains with the component's objective (this class);
a rule consumes nothing (:mod:`rlhf_lab.rewards.rule`).
"""

from __future__ import annotations

import torch

from rlhf_lab.data import collate_prompt_groups, collate_sequences, encode_prompt, record_response_ids
from rlhf_lab.records import PreferenceRecord
from rlhf_lab.rewards.configs import RewardConfig


class RewardObjective:
    """Turns records into batches and sequence scores into a loss.

    Subclasses implement :meth:`loss`. Registered as a class, a subclass has the traits below (read once at
    registration, :data:`rlhf_lab.components.TRAITS`); registered through ``lazy_factory``, the traits
    are given there instead.
    """

    feedback_kind: str = "ranking"
    """The records it trains on: ``"ranking"`` or ``"rating"``."""
    consumes: tuple[str, ...] = ("reward_model",)
    """The run trains the reward model (on preference records of ``feedback_kind``) first."""

    def __init__(self, cfg: RewardConfig) -> None:
        self.cfg = cfg

    def collate(self, records: list[PreferenceRecord], tokenizer, prompt_ids: dict[str, list[int]] | None = None,
                share_prompt: bool | None = None) -> dict:
        """Flatten every response of every record into one batch, plus the preference pairs between them.

        Adds ``pair_better``/``pair_worse`` (indices into the flattened responses) and ``targets``
        (the records' scores where present, else zeros). Responses are the records' token ids where they
        carry them (candidates the policy sampled), so the model trains on the ids it will score.
        ``prompt_ids`` maps prompt texts to ids already encoded (a loader encodes each prompt once).
        With ``share_prompt`` (default: ``reward.share_prompt``) a record is one row
        (:func:`~rlhf_lab.data.collate_prompt_groups`), else each response is one row; score either
        with :meth:`batch_scores`.
        """
        groups, better, worse, targets = [], [], [], []
        offset = 0
        for record in records:
            ids = prompt_ids[record.prompt] if prompt_ids and record.prompt in prompt_ids else encode_prompt(tokenizer, record.prompt)
            responses = record_response_ids(tokenizer, record)
            groups.append((ids, responses))
            targets.extend(record.scores[i] if record.scores is not None else 0.0 for i in range(len(responses)))
            for b, w in record.preference_pairs():
                better.append(offset + b)
                worse.append(offset + w)
            offset += len(responses)
        if share_prompt is None:
            share_prompt = getattr(self.cfg, "share_prompt", False)
        if share_prompt:
            batch = collate_prompt_groups(groups, tokenizer.pad_token_id)
        else:  # a reward model scores whole sequences: the compact right-padded layout is enough
            batch = collate_sequences([p for p, rs in groups for _ in rs], [r for _, rs in groups for r in rs], tokenizer.pad_token_id)
        batch["pair_better"] = torch.tensor(better, dtype=torch.long)
        batch["pair_worse"] = torch.tensor(worse, dtype=torch.long)
        batch["targets"] = torch.tensor(targets, dtype=torch.float)
        return batch

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def reward_function(self, inputs: dict, tokenizer, dtype: str = "float32"):
        """The trained model in ``inputs["reward_model"]`` with its normaliser, frozen; for an ensemble
        (``reward.ensemble_size`` > 1) every member's, combined by ``reward.ensemble_objective``."""
        from rlhf_lab.rewards.ensemble_files import member_dirs
        from rlhf_lab.rewards.function import EnsembleReward

        members = [self._learned(path, dtype) for path in member_dirs(inputs["reward_model"].path)]
        if len(members) == 1:
            return members[0]
        return EnsembleReward(members, getattr(self.cfg, "ensemble_objective", "mean"), getattr(self.cfg, "ensemble_coef", 1.0))

    def _learned(self, path, dtype: str):
        from rlhf_lab.models.loading import load_value_model
        from rlhf_lab.models.value_model import RewardNormaliser
        from rlhf_lab.rewards.function import LearnedReward

        # A reward model given by path may come from elsewhere, without our normaliser: scores stay raw.
        normaliser = RewardNormaliser.load(path, missing_ok=bool(getattr(self.cfg, "path", None)))
        return LearnedReward(load_value_model(str(path), dtype, key=f"reward model {path}"), normaliser)

    @staticmethod
    def batch_scores(model, batch: dict) -> torch.Tensor:
        """Scores (N,) of a :meth:`collate` batch's responses under a value model, in either layout."""
        if "segment_ids" in batch:
            return model.group_scores(batch)
        return model.sequence_scores(batch["input_ids"], batch["attention_mask"], batch["position_ids"])

    @staticmethod
    def pair_accuracy(scores: torch.Tensor, batch: dict) -> tuple[int, int]:
        """(correct, total) over the batch's preference pairs; a tie in score counts as wrong."""
        b, w = batch["pair_better"], batch["pair_worse"]
        return int((scores[b] > scores[w]).sum()), int(b.numel())
