"""Reward functions: what scores (prompt, response) token ids while a policy is optimised or evaluated.

A reward function is kept apart from the reward *objective* (the training loss of a learned reward
model, :mod:`rlhf_lab.rewards.base`). Every reward function takes a batch in the shared layout
(:func:`rlhf_lab.data.join`) and returns one score per row; it never changes during a run.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from rlhf_lab.models.value_model import RewardNormaliser
from rlhf_lab.ops.ensemble import ensemble_reward, member_spread
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


class EnsembleReward:
    """K learned rewards combined by a conservative objective (:func:`rlhf_lab.ops.ensemble.ensemble_reward`).

    Each member has its own normaliser (mean 0, std 1 on the SFT policy's samples), so the members'
    scores are on one scale before they are combined and their spread is comparable across runs.

    :param members: the :class:`LearnedReward` of each member.
    :param objective: a name of :data:`rlhf_lab.ops.ensemble.OBJECTIVES`.
    :param coef: the spread's (or variance's) weight in the objective.
    """

    def __init__(self, members: list[LearnedReward], objective: str = "mean", coef: float = 1.0) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs two or more members, got {len(members)}")
        self.members, self.objective, self.coef = members, objective, coef

    @torch.no_grad()
    def member_scores(self, batch: dict) -> torch.Tensor:
        """(K, B) each member's normalised scores."""
        return torch.stack([member(batch).float() for member in self.members])

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.detailed(batch)[0]

    def detailed(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's scores, and per row the members' mean (``reward_mean``) and spread (``reward_spread``)."""
        scores = self.member_scores(batch)
        return ensemble_reward(scores, self.objective, self.coef), {"reward_mean": scores.mean(0), "reward_spread": member_spread(scores)}

    def to(self, device) -> "EnsembleReward":
        for member in self.members:
            member.to(device)
        return self


def scored(reward_fn, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``reward_fn``'s (B,) scores of ``batch`` and its per-row details (an ensemble's mean and spread;
    empty for a reward function that has none), from one scoring pass."""
    detailed = getattr(reward_fn, "detailed", None)
    if detailed is not None:
        return detailed(batch)
    return reward_fn(batch), {}


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
