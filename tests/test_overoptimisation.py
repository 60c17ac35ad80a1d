"""Gao et al.'s over-optimisation forms (rlhf_lab/overoptimisation.py): exact recovery of hand-chosen
coefficients, the peaks in closed form, and a bootstrap interval that holds the true peak."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_lab.overoptimisation import fit_form, fit_overoptimisation, peak_kl


def test_best_of_n_form_is_recovered_and_peaks_at_alpha_over_two_beta():
    # R(d) = d (2 - 0.5 d): d* = 2 / (2 * 0.5) = 2, so KL* = 4 and R(d*) = 2.
    kl = [0.25, 1.0, 2.25, 4.0, 9.0]
    gain = [math.sqrt(k) * (2 - 0.5 * math.sqrt(k)) for k in kl]
    alpha, beta = fit_form(kl, gain, "best_of_n")
    assert (alpha, beta) == pytest.approx((2.0, 0.5))
    assert peak_kl(alpha, beta, "best_of_n") == pytest.approx(4.0)


def test_rl_form_is_recovered_and_peaks_at_e_to_the_alpha_over_beta_minus_one():
    # R(d) = d (1 - 0.5 log d): dR/dd = 1 - 0.5 log d - 0.5 = 0 at d* = e, KL* = e^2 = 7.389.
    kl = [0.0, 1.0, 4.0, 9.0, 16.0, 25.0]
    gain = [0.0 if k == 0 else math.sqrt(k) * (1 - 0.5 * math.log(math.sqrt(k))) for k in kl]
    alpha, beta = fit_form(kl, gain, "rl")
    assert (alpha, beta) == pytest.approx((1.0, 0.5))
    assert peak_kl(alpha, beta, "rl") == pytest.approx(math.e ** 2)


def test_a_curve_that_does_not_turn_has_no_peak_and_bad_input_is_refused():
    assert peak_kl(1.0, 0.0, "rl") is None and peak_kl(1.0, -0.2, "best_of_n") is None and peak_kl(1.0, -0.2, "rl") is None
    with pytest.raises(ValueError):
        fit_form([1.0], [1.0], "rl")
    with pytest.raises(ValueError):
        fit_form([1.0, 2.0], [1.0, 2.0], "linear")
    with pytest.raises(ValueError):
        fit_form([-1.0, 2.0], [1.0, 2.0], "rl")


def test_the_peak_interval_holds_the_true_peak_and_narrows_with_smaller_errors():
    kl = [0.5, 1, 2, 4, 6, 9, 12, 16]
    truth = [math.sqrt(k) * (1 - 0.5 * math.log(math.sqrt(k))) for k in kl]
    rng = np.random.default_rng(0)
    noisy = [g + e for g, e in zip(truth, rng.normal(0, 0.02, len(kl)))]
    wide = fit_overoptimisation(kl, noisy, [0.05] * len(kl), "rl", seed=1)
    narrow = fit_overoptimisation(kl, noisy, [0.01] * len(kl), "rl", seed=1)
    assert wide.peak_low < math.e ** 2 < wide.peak_high and wide.turned == 1.0
    assert narrow.peak_high - narrow.peak_low < wide.peak_high - wide.peak_low
    assert wide.gain(4.0) == pytest.approx(wide.alpha * 2 - wide.beta * 2 * math.log(2))
    assert fit_overoptimisation(kl, noisy, [0.05] * len(kl), "rl", seed=1) == wide  # seeded
    with pytest.raises(ValueError):
        fit_overoptimisation(kl, noisy, [0.05], "rl")
