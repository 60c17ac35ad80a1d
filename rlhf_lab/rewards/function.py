"""Reward functions: what scores (prompt, response) token ids while a policy is optimised or evaluated.

A reward function is kept apart from the reward *objective* (the training loss of a learned reward
model, :mod:`rlhf_lab.rewards.base`). Every reward function takes a batch in the shared layout
(:func:`rlhf_lab.data.join`) and returns one score per row; it never changes during a run.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from rlhf_lab.models.value_model import RewardNormaliser
from rlhf_lab.rewards.scoring import rule_score


class RewardFunction(Protocol):
    """Scores a batch of (prompt, response) token ids: ``reward_fn(batch) -> (B,) tensor``."""

    def __call__(self, batch: dict) -> torch.Tensor: ...

    def to(self, device) -> "RewardFunction": ...


class LearnedReward:
    """A trained reward model and the normaliser that gives the SFT policy's samples mean 0, std 1.

    :param model: a :class:`~rlhf_lab.models.value_model.ValueModel`; frozen here (eval mode, no grads).
    """

    def __init__(self, model, normaliser: RewardNormaliser) -> None:
        self.model = model.eval().requires_grad_(False)
        self.normaliser = normaliser

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        raw = self.model.sequence_scores(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        return self.normaliser(raw)

    def to(self, device) -> "LearnedReward":
        self.model.to(device)
        return self


class RuleReward:
    """A Python function of the decoded texts: ``function(prompt, response, **kwargs) -> float``.

    For verifiable rewards (an exact answer, a format, a length). Prompt and response are decoded
    from the very token ids the policy produced, special tokens dropped.
    """

    def __init__(self, function: Callable[..., float], tokenizer, kwargs: dict | None = None, name: str | None = None) -> None:
        self.function, self.tokenizer, self.kwargs, self.name = function, tokenizer, dict(kwargs or {}), name

    def __call__(self, batch: dict) -> torch.Tensor:
        p = batch["prompt_len"]
        ids, mask = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
        scores = []
        for row, row_mask in zip(ids, mask):
            prompt = self.tokenizer.decode([t for t, m in zip(row[:p], row_mask[:p]) if m], skip_special_tokens=True)
            response = self.tokenizer.decode([t for t, m in zip(row[p:], row_mask[p:]) if m], skip_special_tokens=True)
            scores.append(rule_score(self.function, prompt.strip(), response.strip(), self.kwargs, self.name))  # named when it fails
        return torch.tensor(scores, device=batch["input_ids"].device)

    def to(self, device) -> "RuleReward":
        return self
