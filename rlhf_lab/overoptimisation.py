"""Where over-optimisation starts: Gao et al.'s functional forms fitted to reward against KL.

Gao, Schulman and Hilton (2022, "Scaling Laws for Reward Model Overoptimization") found that the gold
reward gained over the initial policy, as a function of ``d = sqrt(KL(policy || initial))``, follows

    best-of-n:  R(d) = d (alpha - beta d)
    RL:         R(d) = d (alpha - beta log d)

Both pass through R(0) = 0 and are linear in (alpha, beta), so a least-squares fit is exact linear
algebra. With beta > 0 the gold curve turns: best-of-n peaks at d* = alpha / (2 beta), RL at
d* = exp(alpha / beta - 1); the peak KL is d*^2. Its interval comes from a parametric bootstrap: each
point's gain is redrawn from a normal with its standard error, and the form refitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

FORMS = ("best_of_n", "rl")


def _features(kl: np.ndarray, form: str) -> np.ndarray:
    """(points, 2) design of R = alpha * f1 - beta * f2: best-of-n (d, d^2), RL (d, d log d)."""
    d = np.sqrt(np.clip(kl, 0.0, None))
    if form == "best_of_n":
        second = d * d
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            second = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)  # d log d -> 0 as d -> 0
    return np.stack([d, -second], axis=-1)


def fit_form(kl: list[float], gain: list[float], form: str) -> tuple[float, float]:
    """Least-squares ``(alpha, beta)`` of ``form`` ("best_of_n" or "rl") to reward gains at KLs.

    :raises ValueError: for an unknown form, unequal lengths, fewer than 2 points or a negative KL.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    k, g = np.asarray(kl, dtype=float), np.asarray(gain, dtype=float)
    if k.shape != g.shape or k.size < 2:
        raise ValueError(f"need at least 2 (KL, gain) points of equal count, got {k.size} and {g.size}")
    if (k < 0).any():
        raise ValueError("a KL is negative: estimate it with more samples before fitting")
    (alpha, beta), *_ = np.linalg.lstsq(_features(k, form), g, rcond=None)
    return float(alpha), float(beta)


def peak_kl(alpha: float, beta: float, form: str) -> Optional[float]:
    """The KL at which ``form`` with these coefficients peaks; None when it never turns (beta <= 0)."""
    if beta <= 0:
        return None
    d = alpha / (2.0 * beta) if form == "best_of_n" else math.exp(min(alpha / beta - 1.0, 350.0))
    return d * d if d > 0 else None


@dataclass(frozen=True)
class OveroptimisationFit:
    """A form fitted to one reward's gains, and where it peaks.

    :param peak_kl: KL at the fitted peak, None when the fit does not turn.
    :param peak_low: the interval's ends over the bootstrap refits that turned (None without any).
    :param turned: share of bootstrap refits that have a peak at all.
    """

    form: str
    alpha: float
    beta: float
    points: int
    peak_kl: Optional[float]
    peak_low: Optional[float] = None
    peak_high: Optional[float] = None
    turned: float = 0.0

    def gain(self, kl: float) -> float:
        """The fitted gain at ``kl``."""
        f = _features(np.asarray([kl], dtype=float), self.form)[0]
        return float(self.alpha * f[0] + self.beta * f[1])


def fit_overoptimisation(kl: list[float], gain: list[float], gain_se: list[float], form: str,
                         level: float = 0.95, resamples: int = 1000, seed: int = 0) -> OveroptimisationFit:
    """Fit ``form`` to ``gain`` (reward over the initial policy) against ``kl``, with a parametric bootstrap
    interval for the peak KL (each gain redrawn from N(gain, se), the form refitted; KL taken as exact).

    :param gain_se: one standard error per gain (0 where unknown: that point is not redrawn).
    """
    alpha, beta = fit_form(kl, gain, form)
    se = np.asarray(gain_se, dtype=float)
    if se.shape != (len(gain),) or not np.isfinite(se).all() or (se < 0).any():
        raise ValueError("gain_se needs one finite, non-negative standard error per gain")
    rng = np.random.default_rng(seed)
    draws = np.asarray(gain, dtype=float) + rng.standard_normal((resamples, len(gain))) * se
    design = _features(np.asarray(kl, dtype=float), form)
    coefficients = np.linalg.lstsq(design, draws.T, rcond=None)[0].T  # (resamples, 2)
    peaks = [peak_kl(a, b, form) for a, b in coefficients]
    finite = np.asarray([p for p in peaks if p is not None], dtype=float)
    low = high = None
    if finite.size:
        tail = (1.0 - level) / 2.0
        low, high = (float(q) for q in np.quantile(finite, [tail, 1.0 - tail]))
    return OveroptimisationFit(form, alpha, beta, len(gain), peak_kl(alpha, beta, form), low, high, finite.size / resamples)
