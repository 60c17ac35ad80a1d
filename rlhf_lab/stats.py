"""Uncertainty for held-out evaluation figures, and verdicts that respect it.

Every evaluation figure is a mean over a finite set of prompts, so two policies differ by some
amount even when neither is better. These functions put a standard error or an interval on each
figure, so that a verdict (:mod:`rlhf_lab.verdicts`) only calls a change an improvement, a regression
or over-optimisation when it is larger than that noise. Differences between two policies are taken
per prompt (paired), which removes the prompt-to-prompt spread both policies share.
"""

from __future__ import annotations

import math

import numpy as np


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean of ``values`` and its standard error, ``std(ddof=1) / sqrt(n)``.

    A single value carries no information about its own spread; its standard error is reported
    as 0 rather than undefined, so callers must not read ``se == 0`` as "exact" when ``n == 1``.

    :param values: one figure per evaluation item.
    :returns: ``(mean, standard_error)``.
    :raises ValueError: if ``values`` is empty.
    """
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("mean_and_se needs at least one value")
    if array.size == 1:
        return float(array[0]), 0.0
    return float(array.mean()), float(array.std(ddof=1) / math.sqrt(array.size))


def paired_difference(candidate: list[float], baseline: list[float]) -> tuple[float, float]:
    """Mean and standard error of ``candidate[i] - baseline[i]`` over paired items.

    :param candidate: one figure per item for the policy being judged.
    :param baseline: the same figure for the baseline policy, on the same items in the same order.
    :returns: ``(mean_difference, standard_error)``; see :func:`mean_and_se` for one item.
    :raises ValueError: if the lists differ in length or are empty.
    """
    _check_paired(candidate, baseline)
    return mean_and_se([c - b for c, b in zip(candidate, baseline)])


def win_rate(candidate: list[float], baseline: list[float]) -> float:
    """Share of paired items on which the candidate scores higher; a tie counts one half.

    :param candidate: one score per item for the policy being judged.
    :param baseline: the baseline's score on the same items in the same order.
    :returns: the win rate, between 0 and 1.
    :raises ValueError: if the lists differ in length or are empty.
    """
    _check_paired(candidate, baseline)
    return float(np.mean(_outcomes(candidate, baseline)))


def win_rate_interval(
    candidate: list[float], baseline: list[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for :func:`win_rate`, resampling items with replacement.

    Each item is a win, a tie or a loss, so resampling ``n`` items draws the three counts from a
    multinomial with the observed shares; drawing the counts directly gives the same distribution
    without materialising ``resamples x n`` indices.

    :param candidate: one score per item for the policy being judged.
    :param baseline: the baseline's score on the same items in the same order.
    :param level: coverage of the interval, strictly between 0 and 1.
    :param resamples: number of bootstrap resamples.
    :param seed: seed of the resampling; the same inputs and seed give the same interval.
    :returns: ``(low, high)``.
    :raises ValueError: on unpaired or empty inputs, ``level`` outside (0, 1) or ``resamples < 1``.
    """
    _check_paired(candidate, baseline)
    _check_bootstrap(level, resamples)
    outcomes = _outcomes(candidate, baseline)
    n = len(outcomes)
    shares = [float(np.mean(outcomes == value)) for value in (1.0, 0.5, 0.0)]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    return _percentile_interval((counts[:, 0] + 0.5 * counts[:, 1]) / n, level)


def length_controlled_win_rate(
    candidate: list[float], baseline: list[float], length_difference: list[float],
    level: float = 0.95, resamples: int = 1000, seed: int = 0,
) -> tuple[float, float, float]:
    """Win rate with the effect of response length taken out, and its percentile bootstrap interval.

    As AlpacaEval 2 does (Dubois et al. 2024), each item's outcome (win 1, tie 1/2, loss 0) is regressed on
    the length difference by logistic regression, ``P(win) = sigmoid(theta_0 + theta_1 * tanh(d / sd(d)))``
    with ``d`` the candidate's length minus the baseline's, and the win rate is read off at equal lengths:
    ``sigmoid(theta_0)``. A judge that rewards length alone gets 1/2, however long the candidate's answers.

    :param candidate: one score per item for the policy being judged.
    :param baseline: the baseline's score on the same items in the same order.
    :param length_difference: candidate minus baseline response length, per item.
    :param level: coverage of the interval, strictly between 0 and 1.
    :param resamples: bootstrap resamples (items drawn with replacement, the regression fitted again).
    :param seed: seed of the resampling.
    :returns: ``(rate, low, high)``.
    :raises ValueError: on unpaired or empty inputs, ``level`` outside (0, 1) or ``resamples < 1``.
    """
    _check_paired(candidate, baseline)
    _check_paired(candidate, length_difference)
    _check_bootstrap(level, resamples)
    outcomes = _outcomes(candidate, baseline)
    d = np.asarray(length_difference, dtype=float)
    spread = d.std(ddof=1) if d.size > 1 else 0.0
    x = np.tanh(d / spread) if spread > 0 else np.zeros_like(d)
    rate = float(_logistic_intercept_rate(outcomes[None, :], x[None, :])[0])
    draws = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    low, high = _percentile_interval(_logistic_intercept_rate(outcomes[draws], x[draws]), level)
    return rate, low, high


def _logistic_intercept_rate(y: np.ndarray, x: np.ndarray, iterations: int = 50) -> np.ndarray:
    """``sigmoid(theta_0)`` of the logistic regression of each row's outcomes ``y`` (in [0, 1]) on ``x``,
    fitted by Newton's method for all rows at once.

    A tiny ridge keeps the fit finite where the data separate (every item a win): the rate then tends to 1
    as it should, instead of the parameters diverging.
    """
    theta = np.zeros((y.shape[0], 2))
    ridge = 1e-6 * y.shape[1]
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(theta[:, :1] + theta[:, 1:] * x, -30.0, 30.0)))
        residual, weight = y - p, p * (1.0 - p)
        gradient = np.stack([residual.sum(1), (residual * x).sum(1)], axis=1) - ridge * theta
        h00 = weight.sum(1) + ridge
        h01 = (weight * x).sum(1)
        h11 = (weight * x * x).sum(1) + ridge
        det = h00 * h11 - h01 * h01
        step = np.stack([h11 * gradient[:, 0] - h01 * gradient[:, 1], h00 * gradient[:, 1] - h01 * gradient[:, 0]], axis=1) / det[:, None]
        theta = theta + step
        if np.abs(step).max() < 1e-10:
            break
    return 1.0 / (1.0 + np.exp(-theta[:, 0]))


def preference_outcomes(scores: list[list[float]], pairs: list[list[tuple[int, int]]]) -> tuple[list[float], list[float]]:
    """How well per-response scores order preference pairs, one value per record.

    A record with K ranked responses gives up to K(K-1)/2 pairs, which share responses and so are not
    independent: each record contributes the mean over its pairs, and standard errors are then taken over
    records. A record without a pair contributes nothing.

    :param scores: per record, one score per response (a reward model's, or an implicit reward).
    :param pairs: per record, its (better, worse) response index pairs.
    :returns: ``(accuracy, margin)`` per record with a pair: the share of its pairs with the better response
        scored higher (a tie counts 1/2), and the mean of ``score[better] - score[worse]``.
    :raises ValueError: if ``scores`` and ``pairs`` differ in length.
    """
    if len(scores) != len(pairs):
        raise ValueError(f"{len(scores)} score lists for {len(pairs)} records")
    accuracy, margin = [], []
    for record_scores, record_pairs in zip(scores, pairs):
        if not record_pairs:
            continue
        gaps = [record_scores[better] - record_scores[worse] for better, worse in record_pairs]
        accuracy.append(sum(1.0 if g > 0 else 0.5 if g == 0 else 0.0 for g in gaps) / len(gaps))
        margin.append(sum(gaps) / len(gaps))
    return accuracy, margin


def beyond_noise(delta: float, se: float, z: float = 2.0) -> bool:
    """Whether a difference is larger than its noise: ``|delta| > z * se``.

    With ``se == 0`` any nonzero difference counts, and a zero difference never does.

    :param delta: the measured difference.
    :param se: its standard error.
    :param z: how many standard errors the difference must exceed (2 is roughly a 95% test).
    :returns: ``True`` when the difference is beyond noise.
    """
    return abs(delta) > z * se


def _outcomes(candidate: list[float], baseline: list[float]) -> np.ndarray:
    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    return np.where(c > b, 1.0, np.where(c == b, 0.5, 0.0))


def _check_bootstrap(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")


def _percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def _check_paired(candidate: list[float], baseline: list[float]) -> None:
    if len(candidate) != len(baseline):
        raise ValueError(f"paired figures need equal lengths, got {len(candidate)} and {len(baseline)}")
    if len(candidate) == 0:
        raise ValueError("paired figures need at least one item")
