"""Which comparisons to send for labelling: acquisition scores of candidate pairs under a reward-model ensemble.

``scores`` is (K, N): K members' scores of N candidate responses; a pair (i, j) is a comparison of
responses i and j. Each member predicts P(i better than j) = sigmoid(s_i - s_j) (Bradley-Terry). A
comparison teaches the reward model most where those predictions disagree:

- ``disagreement``: the variance over members of the predicted probability (Christiano et al. 2017
  chose the pairs with the highest such variance across their ensemble);
- ``information``: the mutual information between the label and the member (BALD, Houlsby et al.
  2011): the entropy of the ensemble's mean prediction less the members' mean entropy. It is high
  where the members are each confident but contradict one another, and low where they agree, or
  where every member is unsure (a coin flip teaches little about which member is right).

A record of more than two responses is scored by the mean over its pairs.
"""

from __future__ import annotations

import torch


def member_preferences(scores: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(K, P) each member's P(response ``first[p]`` better than ``second[p]``)."""
    return torch.sigmoid(scores[:, first] - scores[:, second])


def disagreement(probabilities: torch.Tensor) -> torch.Tensor:
    """(P,) the variance over the K members (over K, not K - 1) of their (K, P) predicted probabilities."""
    return probabilities.var(dim=0, unbiased=False)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Binary entropy in nats, 0 at p = 0 and p = 1."""
    p = p.clamp(1e-12, 1 - 1e-12)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def information_gain(probabilities: torch.Tensor) -> torch.Tensor:
    """(P,) mutual information (nats) between a pair's label and the ensemble member, from their (K, P)
    predicted probabilities: H(mean_k p_k) - mean_k H(p_k); between 0 and log 2."""
    return _entropy(probabilities.mean(0)) - _entropy(probabilities).mean(0)


ACQUISITIONS = {"disagreement": disagreement, "information": information_gain}
"""Acquisition name -> ``f(probabilities (K, P)) -> (P,)``; with ``random`` the names ``feedback.selection`` takes."""


def record_acquisition(scores: torch.Tensor, groups: list[list[int]], rule: str) -> torch.Tensor:
    """(R,) acquisition of each candidate record: ``groups[r]`` indexes the columns of ``scores`` (K, N)
    holding record r's responses; a record's value is the mean of ``rule`` over all its pairs."""
    if rule not in ACQUISITIONS:
        raise ValueError(f"unknown acquisition rule {rule!r}; choose one of {', '.join(ACQUISITIONS)}")
    if scores.dim() != 2 or scores.shape[0] < 2:
        raise ValueError(f"acquisition needs (K >= 2, N) ensemble scores, got shape {tuple(scores.shape)}")
    first, second, owner = [], [], []
    for r, group in enumerate(groups):
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                first.append(group[a])
                second.append(group[b])
                owner.append(r)
    values = ACQUISITIONS[rule](member_preferences(scores, torch.tensor(first, dtype=torch.long), torch.tensor(second, dtype=torch.long)))
    owner_t = torch.tensor(owner, dtype=torch.long)
    totals = torch.zeros(len(groups), dtype=values.dtype).index_add_(0, owner_t, values)
    counts = torch.zeros(len(groups), dtype=values.dtype).index_add_(0, owner_t, torch.ones_like(values))
    return totals / counts.clamp(min=1)


def top_k(values: torch.Tensor, k: int, generator: torch.Generator | None = None) -> list[int]:
    """Indices of the ``k`` largest ``values``, ties broken at random (``generator``), in descending order."""
    noise = torch.rand(values.shape, generator=generator, dtype=torch.float64) * 1e-9
    order = torch.argsort(values.double() + noise, descending=True)
    return order[:k].tolist()
