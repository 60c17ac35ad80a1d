"""Uncertainty for held-out evaluation figures, and verdicts that respect it.

Every evaluation figure is a mean over a finite set of prompts, so two policies differ by some
amount even when neither is better. These functions put a standard error or an interval on each
figure, and :func:`verdict_lines` only calls a change an improvement, a regression or
over-optimisation when it is larger than that noise. Differences between two policies are taken
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
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1, got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    outcomes = _outcomes(candidate, baseline)
    n = len(outcomes)
    shares = [float(np.mean(outcomes == value)) for value in (1.0, 0.5, 0.0)]
    counts = np.random.default_rng(seed).multinomial(n, shares, size=resamples)
    rates = (counts[:, 0] + 0.5 * counts[:, 1]) / n
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(rates, [tail, 1.0 - tail])
    return float(low), float(high)


def beyond_noise(delta: float, se: float, z: float = 2.0) -> bool:
    """Whether a difference is larger than its noise: ``|delta| > z * se``.

    With ``se == 0`` any nonzero difference counts, and a zero difference never does.

    :param delta: the measured difference.
    :param se: its standard error.
    :param z: how many standard errors the difference must exceed (2 is roughly a 95% test).
    :returns: ``True`` when the difference is beyond noise.
    """
    return abs(delta) > z * se


STILL_KL = 0.01
"""A policy whose KL to its reference (nats per response) is under this did not move: a verdict says so
first, whatever the other figures (their differences are then noise around zero)."""


def verdict_lines(metrics: dict, algo: str, baseline: str = "sft") -> list[str]:
    """Plain sentences on what a run achieved against its baseline, with noise taken into account.

    Reads the paired differences ``eval/<algo>/<figure>_diff`` and ``eval/<algo>/<figure>_diff_se``
    for ``gold_reward``, ``proxy_reward`` and ``response_length`` (candidate minus baseline), the
    win rate ``eval/<algo>/win_rate`` with ``eval/<algo>/win_rate_low`` / ``_high``, and the mean
    response lengths ``eval/<algo>/response_length`` and ``eval/<baseline>/response_length``, and the
    KL to the reference ``eval/<algo>/kl`` (under :data:`STILL_KL`: the policy did not move).
    A difference whose standard error is missing is not judged.

    :param metrics: a run's flat ``metrics.json`` dict.
    :param algo: the optimised policy's name, as in the metric names.
    :param baseline: the baseline policy's name.
    :returns: one sentence per finding.
    """
    gold = _difference(metrics, algo, "gold_reward")
    proxy = _difference(metrics, algo, "proxy_reward")
    length = _difference(metrics, algo, "response_length")
    lines = []
    if gold is not None:
        lines.append(_gold_line(metrics, algo, baseline, *gold))
        if proxy is not None and proxy[0] > 0 and beyond_noise(*proxy):
            proxy_text = f"Proxy reward rose by {_pm(*proxy)}"
            if gold[0] < 0 and beyond_noise(*gold):
                lines.append(f"{proxy_text} while gold reward fell: the policy is exploiting the reward model (over-optimisation).")
            elif not beyond_noise(*gold):
                lines.append(f"{proxy_text} but gold reward did not move beyond noise: the reward model's gain did not transfer to gold reward.")
    elif proxy is not None:
        judged = "beyond" if beyond_noise(*proxy) else "within"
        lines.append(f"{algo} changed proxy reward by {_pm(*proxy)} ({judged} noise); this task has no gold utility, so that is all the run can show.")
    else:
        lines.append(f"No paired gold or proxy reward difference was recorded for {algo}, so there is nothing to judge.")
    kl = metrics.get(f"eval/{algo}/kl")
    if kl is not None and abs(kl) < STILL_KL and algo != baseline:
        lines.insert(0, f"{algo}'s policy barely moved from {baseline}'s (KL {kl:.4f} nats per response, under {STILL_KL}): "
                        "the run changed nothing it could measure. Give it more to do: a higher algo.lr (LoRA adapters "
                        "usually need about ten times full fine-tuning's), more steps or epochs, or a smaller KL weight "
                        "(algo.beta for the DPO family, algo.kl_coef otherwise).")
    candidate_length = metrics.get(f"eval/{algo}/response_length")
    baseline_length = metrics.get(f"eval/{baseline}/response_length")
    if length is not None and beyond_noise(*length) and candidate_length and baseline_length:
        ratio = candidate_length / baseline_length
        if ratio > 1.2:
            lines.append(
                f"Responses are {ratio:.2f}× longer than {baseline}'s (Δ = {_pm(*length, digits=2)} tokens): "
                "part of any reward gain may come from length alone."
            )
    return lines


def _gold_line(metrics: dict, algo: str, baseline: str, delta: float, se: float) -> str:
    if not beyond_noise(delta, se):
        return f"{algo}'s gold reward is within noise of {baseline}'s (Δ = {_pm(delta, se)})."
    suffix = _win_rate_text(metrics, algo)
    if delta > 0:
        return f"{algo} improved gold reward over {baseline} by {_pm(delta, se)}{suffix}."
    return f"{algo} made gold reward worse than {baseline}'s: Δ = {_pm(delta, se)}{suffix}."


def _win_rate_text(metrics: dict, algo: str) -> str:
    rate = metrics.get(f"eval/{algo}/win_rate")
    if rate is None:
        return ""
    low, high = metrics.get(f"eval/{algo}/win_rate_low"), metrics.get(f"eval/{algo}/win_rate_high")
    if low is None or high is None:
        return f" (win rate {rate:.3f})"
    return f" (win rate {rate:.3f} [{low:.3f}, {high:.3f}])"


def _difference(metrics: dict, algo: str, figure: str) -> tuple[float, float] | None:
    delta, se = metrics.get(f"eval/{algo}/{figure}_diff"), metrics.get(f"eval/{algo}/{figure}_diff_se")
    if delta is None or se is None:
        return None
    return float(delta), float(se)


def _pm(delta: float, se: float, digits: int = 3) -> str:
    return f"{delta:+.{digits}f} ± {se:.{digits}f}"


def _outcomes(candidate: list[float], baseline: list[float]) -> np.ndarray:
    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    return np.where(c > b, 1.0, np.where(c == b, 0.5, 0.0))


def _check_paired(candidate: list[float], baseline: list[float]) -> None:
    if len(candidate) != len(baseline):
        raise ValueError(f"paired figures need equal lengths, got {len(candidate)} and {len(baseline)}")
    if len(candidate) == 0:
        raise ValueError("paired figures need at least one item")
