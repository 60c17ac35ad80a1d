"""Hand-computed checks of rlhf_lab.ops edge cases that the other op tests leave open.

Each test names the kind of bug it exists for: a reduction along the wrong axis once there are
leading batch dimensions, an off-by-one at a boundary (``<`` vs ``<=``, a clamp of 1 vs 2), a dtype
that leaks through, or a numerically wrong sign. All tensors are tiny; every test runs in milliseconds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.ops.advantages import broadcast_to_tokens, gae, nstep_returns
from rlhf_lab.ops.best_of_n import best_of_n_kl_exact, best_of_n_log_ratio
from rlhf_lab.ops.losses import clipped_value_loss, explained_variance, ppo_policy_loss
from rlhf_lab.ops.masked import masked_var, masked_whiten
from rlhf_lab.ops.rewards import kl_penalised_token_rewards
from rlhf_lab.ops.sampling import filter_logits, sample_next_token

NEG_INF = float("-inf")


# --- sampling ----------------------------------------------------------------------------------------


def test_top_k_filters_along_the_vocabulary_axis_of_a_3d_batch():
    """Catches top-k taken along dim 1 (the time axis) or a size check against shape[1] instead of the
    vocabulary size: with (B, T, V) = (1, 2, 4), k = 2 must keep the two largest logits of each row."""
    logits = torch.tensor([[[1.0, 4.0, 3.0, 2.0], [0.5, -1.0, 2.5, 0.0]]])
    out = filter_logits(logits, top_k=2)
    expected = torch.tensor([[[NEG_INF, 4.0, 3.0, NEG_INF], [0.5, NEG_INF, 2.5, NEG_INF]]])
    assert torch.equal(out, expected)


def test_top_p_filters_along_the_vocabulary_axis_of_a_3d_batch():
    """Catches the nucleus sort / softmax / cumulative mass / scatter done along dim 1 instead of the
    vocabulary axis. Row 0 has probabilities 0.7, 0.2, 0.1 (sorted 0, 1, 2): with top_p = 0.75 the mass
    before token 2 is 0.9 >= 0.75, so only token 2 goes; row 1 (0.1, 0.1, 0.8) keeps only token 2, as
    the mass before each of the other two is already 0.8 (or 0.9)."""
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]], dtype=torch.float64)
    logits = probs.log()
    out = filter_logits(logits, top_p=0.75)
    keep = torch.isfinite(out)
    assert keep.tolist() == [[[True, True, False], [False, False, True]]]
    assert torch.equal(out[keep], logits[keep])


def test_top_p_of_exactly_one_filters_nothing():
    """Catches ``top_p <= 1.0`` (or ``< 2.0``) entering the nucleus branch at top_p = 1: the mass before
    a token of probability e^-30 rounds to exactly 1.0 in float32, so that token would be dropped though
    top_p = 1 is documented as 'filter disabled'."""
    logits = torch.tensor([[0.0, -30.0]])
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)


def test_top_p_drops_a_token_whose_preceding_mass_equals_top_p_exactly():
    """Catches ``mass_before > top_p`` for ``>=``: four tokens of probability 0.25 with top_p = 0.5 keep
    exactly two (the smallest nucleus with mass >= 0.5), not three."""
    out = filter_logits(torch.zeros(1, 4), top_p=0.5)
    assert int(torch.isfinite(out).sum()) == 2


def test_sample_next_token_applies_top_p():
    """Catches top_p not being passed on to the filter: with top_p = 0.5 and one token holding 0.6 of
    the mass, every draw must be that token."""
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.2, 0.1]])).repeat(64, 1)
    tokens = sample_next_token(logits, temperature=1.0, top_k=0, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == [1] * 64


# --- best-of-n ---------------------------------------------------------------------------------------


def test_best_of_n_log_ratio_keeps_the_dtype_of_logp():
    """Catches ``below`` being converted without ``dtype=logp.dtype``: float64 ``below`` must not promote
    a float32 result. The value is the formula's: p = 0.25, F = 0.5, n = 2 gives
    log(((0.75)^2 - 0.5^2) / 0.25) = log(1.25)."""
    out = best_of_n_log_ratio(torch.tensor([math.log(0.25)]), torch.tensor([0.5], dtype=torch.float64), 2)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(math.log(1.25), rel=1e-6)


def test_best_of_n_kl_exact_is_computed_in_float64():
    """Catches the float64 promotion dropped (the sum done in the inputs' float32): for two outcomes of
    probability 1/2, pi_2 = (1/4, 3/4) and KL = 1/4 log(1/2) + 3/4 log(3/2), exact to float64."""
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    got = best_of_n_kl_exact(torch.tensor([0.5, 0.5], dtype=torch.float32), torch.tensor([0.0, 1.0]), 2)
    assert abs(got - expected) < 1e-14


def test_best_of_n_kl_exact_skips_zero_probability_outcomes():
    """Catches the ``p > 0`` filter dropped or weakened to ``p >= 0``: a zero-probability outcome gives
    log 0 = -inf and a NaN term, while pi_n gives it probability 0 too, so the KL must equal that of the
    two remaining outcomes."""
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    got = best_of_n_kl_exact(torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64), torch.tensor([0.0, 0.5, 1.0]), 2)
    assert got == pytest.approx(expected, rel=1e-12)


# --- masked statistics -------------------------------------------------------------------------------


def test_masked_var_of_two_entries_is_bessel_corrected():
    """Catches the Bessel denominator clamped at 2 instead of 1: values 1 and 3 (the 100 is masked out)
    have unbiased variance ((1 - 2)^2 + (3 - 2)^2) / (2 - 1) = 2."""
    values, mask = torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1.0, 1.0, 0.0])
    assert masked_var(values, mask).item() == pytest.approx(2.0)


def test_masked_whiten_adds_eps_to_the_variance():
    """Catches ``rsqrt(var - eps)``: values 1 and 3 have variance 2; with eps = 2 the scale is
    1 / sqrt(2 + 2) = 0.5, so the whitened values are -0.5 and 0.5 (and 0 on padding)."""
    values, mask = torch.tensor([1.0, 3.0, 7.0]), torch.tensor([1.0, 1.0, 0.0])
    assert_close(masked_whiten(values, mask, eps=2.0), torch.tensor([-0.5, 0.5, 0.0]))


def identity_reduce(tensor):
    return tensor


def test_all_reduce_whitening_of_two_entries_matches_the_local_formula():
    """Catches, in the all-reduce branch, a Bessel denominator clamped at 2: values 1 and 3 whiten to
    -+1/sqrt(2) (variance 2), as in the one-process branch."""
    values, mask = torch.tensor([1.0, 3.0, 5.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = torch.tensor([-1.0, 1.0, 0.0]) / math.sqrt(2.0)
    assert_close(masked_whiten(values, mask, all_reduce_sum=identity_reduce), expected)
    assert_close(masked_whiten(values, mask), expected)


def test_all_reduce_whitening_of_one_entry_gives_zero():
    """Catches, in the all-reduce branch, the mean's count clamped at 2: a single valid entry 4 has mean
    4 and variance 0, so it whitens to (4 - 4) / sqrt(0 + eps) = 0; with the mean taken as 4 / 2 it
    would be 2 / sqrt(12)."""
    values, mask = torch.tensor([4.0, 9.0]), torch.tensor([1.0, 0.0])
    assert_close(masked_whiten(values, mask, all_reduce_sum=identity_reduce), torch.zeros(2))


# --- advantages and rewards --------------------------------------------------------------------------


def test_gae_on_single_token_responses_is_reward_minus_value():
    """Catches the running accumulator built from column 1 (an IndexError when T = 1): with one token
    the episode ends at once, so A = r - V and the return is r."""
    rewards, values, mask = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [0.25]]), torch.ones(2, 1)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert_close(advantages, torch.tensor([[1.5], [-1.25]]))
    assert_close(returns, torch.tensor([[2.0], [-1.0]]))


def test_nstep_returns_keep_the_rewards_dtype_with_a_float64_mask():
    """Catches the mask not being cast to the rewards' dtype: a float64 mask must not turn float32
    returns into float64. Values: gamma = 0.5, n = 1, r = (1, 2), V = (4, 8): R = (1 + 0.5 * 8, 2)."""
    rewards, values = torch.tensor([[1.0, 2.0]]), torch.tensor([[4.0, 8.0]])
    advantages, returns = nstep_returns(rewards, values, torch.ones(1, 2, dtype=torch.float64), gamma=0.5, n=1)
    assert returns.dtype == torch.float32 and advantages.dtype == torch.float32
    assert_close(returns, torch.tensor([[5.0, 2.0]]))
    assert_close(advantages, torch.tensor([[1.0, -6.0]]))


def test_broadcast_to_tokens_keeps_the_advantages_dtype():
    """Catches the mask not being cast to the advantages' dtype: float32 advantages over a float64 mask
    stay float32, one value per valid token."""
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))


def test_kl_penalised_token_rewards_accept_float64_scores():
    """Catches the scores not being cast to the rewards' dtype (index_put then refuses mixed dtypes):
    rewards are -0.5 * kl per token with the score added on the last valid token."""
    kl, mask = torch.tensor([[0.2, 0.4, 0.6]]), torch.tensor([[1.0, 1.0, 0.0]])
    out = kl_penalised_token_rewards(torch.tensor([3.0], dtype=torch.float64), kl, mask, kl_coef=0.5)
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([[-0.1, 3.0 - 0.2, 0.0]]))


# --- losses ------------------------------------------------------------------------------------------


def test_clip_fractions_are_in_the_inputs_dtype():
    """Catches the clip-fraction indicator not being cast to the inputs' dtype: float64 log-probs or
    values over a float32 mask give a float64 loss, and the clip fraction must be float64 like it.
    PPO: ratio e^1 with A = 1 and clip 0.2 is clipped on the one valid token (fraction 1). Value loss:
    v = 2 from v_old = 0 with clip 0.5 and R = -1: the clipped error (0.5 + 1)^2 < (2 + 1)^2 (fraction 0)."""
    f64 = torch.float64
    pg = ppo_policy_loss(torch.tensor([[1.0, 0.0]], dtype=f64), torch.zeros(1, 2, dtype=f64), torch.ones(1, 2, dtype=f64),
                         torch.tensor([[1.0, 0.0]]), clip_range=0.2)
    assert pg.loss.dtype == f64 and pg.clipfrac.dtype == f64 and pg.clipfrac.item() == 1.0
    vf_loss, vf_clipfrac = clipped_value_loss(torch.tensor([[2.0]], dtype=f64), torch.zeros(1, 1, dtype=f64),
                                              torch.tensor([[-1.0]], dtype=f64), torch.ones(1, 1), clip_range=0.5)
    assert vf_loss.dtype == f64 and vf_clipfrac.dtype == f64 and vf_clipfrac.item() == 0.0
    assert vf_loss.item() == pytest.approx(0.5 * 9.0)


def test_explained_variance_with_a_target_variance_below_one():
    """Catches the variance floor raised from 1e-12 to about 1: target (0, 1) has variance 0.25 and the
    residual (0, 0.5) of predictions (0, 0.5) has 0.0625, so EV = 1 - 0.0625 / 0.25 = 0.75."""
    ev = explained_variance(torch.tensor([[0.0, 0.5]]), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2))
    assert ev.item() == pytest.approx(0.75)


def test_rollout_sampler_applies_top_p_and_returns_the_filtered_log_prob():
    """Catches the rollout's sampler (rlhf_lab.rollout._sample) not passing top_p to the filter: with
    probabilities (0.1, 0.6, 0.2, 0.1) and top_p = 0.5 only token 1 survives, so every draw is token 1
    and its log-probability under the filtered (renormalised) distribution is log 1 = 0."""
    from rlhf_lab.rollout import _sample

    logits = torch.log(torch.tensor([[0.1, 0.6, 0.2, 0.1]])).repeat(32, 1)
    tokens, logp = _sample(logits, 1.0, 0, 0.5, torch.Generator().manual_seed(0))
    assert tokens.tolist() == [1] * 32
    assert_close(logp, torch.zeros(32))
