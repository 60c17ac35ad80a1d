"""Combining the scores of a reward-model ensemble into the reward a policy optimises.

``scores`` is (K, B): K members' normalised scores of B responses. The members' spread is the sample
standard deviation over the K (Bessel-corrected: with K = 2 or 3 members the plain one underestimates
it badly); the variance of ``uncertainty_weighted`` is Coste et al.'s, over K. Objectives (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization";
Eisenstein et al. 2023, "Helping or Herding?"):

- ``mean``: the members' mean, the ensemble's best guess;
- ``mean_minus_std``: mean - coef x spread, a lower confidence bound;
- ``worst_case``: the lowest member's score (Coste et al.'s WCO);
- ``uncertainty_weighted``: mean - coef x variance over the K (Coste et al.'s UWO, their lambda is ``coef``).

A policy that drifts where the members disagree is penalised by the last three, and the drift where
one reward model is wrong and the others are not is what over-optimisation exploits.
"""

from __future__ import annotations

import torch

def member_spread(scores: torch.Tensor) -> torch.Tensor:
    """(B,) sample standard deviation of the K members' scores (K >= 2), per response."""
    if scores.dim() != 2 or scores.shape[0] < 2:
        raise ValueError(f"member_spread needs (K >= 2, B) scores, got shape {tuple(scores.shape)}")
    return scores.std(dim=0, unbiased=True)


OBJECTIVES = {
    "mean": lambda scores, coef: scores.mean(0),
    "mean_minus_std": lambda scores, coef: scores.mean(0) - coef * member_spread(scores),
    "worst_case": lambda scores, coef: scores.min(0).values,
    "uncertainty_weighted": lambda scores, coef: scores.mean(0) - coef * scores.var(dim=0, unbiased=False),
}
"""Objective name -> ``f(scores (K, B), coef) -> (B,)``; the names ``reward.ensemble_objective`` takes."""


def ensemble_reward(scores: torch.Tensor, objective: str = "mean", coef: float = 1.0) -> torch.Tensor:
    """(B,) reward of ``objective`` over (K, B) member scores; ``coef`` weighs the spread (or
    variance) in ``mean_minus_std`` (``uncertainty_weighted``) and is ignored otherwise."""
    if scores.dim() != 2:
        raise ValueError(f"ensemble scores must be (K, B), got shape {tuple(scores.shape)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown ensemble objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective](scores, coef)
