"""Noisy feedback from scores: Plackett-Luce rankings and Gaussian ratings.

Ranking K items by ``score / beta + Gumbel noise`` samples the Plackett-Luce model, whose pairwise
marginals are exactly Bradley-Terry: P(a above b) = sigmoid((score_a - score_b) / beta).
Feedback sources (built-in and third-party) share these so their noise means the same thing.
"""

from __future__ import annotations

import math
import random


def plackett_luce_ranking(scores: list[float], beta: float, rng: random.Random) -> list[int]:
    """Indices of ``scores`` from best to worst under Gumbel noise of temperature ``beta``."""
    noisy = [s / beta - math.log(-math.log(rng.random() or 1e-12)) for s in scores]
    return sorted(range(len(scores)), key=lambda k: -noisy[k])


def gaussian_ratings(scores: list[float], beta: float, rng: random.Random) -> list[float]:
    """``score + beta * Normal(0, 1)`` for each score."""
    return [s + beta * rng.gauss(0.0, 1.0) for s in scores]
