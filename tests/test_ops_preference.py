"""Direct preference losses (rlhf_lab.ops.preference) and best-of-n KL (rlhf_lab.ops.best_of_n).

Expected numbers are written out as arithmetic (math.log / math.exp expressions), or come from small
reference implementations below that are written from the papers' formulas in plain Python, laid out
the way TRL's trainers compute them; none is obtained by calling the function under test.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.ops.best_of_n import best_of_n_kl_closed_form, best_of_n_kl_exact, best_of_n_log_ratio
from rlhf_lab.ops.preference import dpo_sigmoid_loss, implicit_rewards, ipo_loss, simpo_loss


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


def softplus(x):
    """log(1 + e^x) without overflow; -log sigmoid(x) = softplus(-x)."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


# --------------------------------------------------------------------------------------------------
# Reference implementations, written from the paper formulas in the layout of TRL's trainers
# (DPOTrainer.dpo_loss for "sigmoid" / "ipo", CPOTrainer.cpo_loss for "simpo"): plain Python, one pair
# at a time.
# --------------------------------------------------------------------------------------------------


def ref_dpo(pc, pr, rc, rr, beta, label_smoothing):
    out = []
    for a, b, c, d in zip(pc, pr, rc, rr):
        logits = (a - b) - (c - d)  # pi_logratios - ref_logratios
        # -(1 - eps) log sigmoid(beta * logits) - eps log sigmoid(-beta * logits)
        out.append((1 - label_smoothing) * softplus(-beta * logits) + label_smoothing * softplus(beta * logits))
    return out


def ref_ipo_trl(pc_tokens, pr_tokens, rc_tokens, rr_tokens, beta):
    """TRL's IPO: every sequence log-prob is the MEAN over its completion tokens, then (h - 1/(2 beta))^2."""
    out = []
    for a, b, c, d in zip(pc_tokens, pr_tokens, rc_tokens, rr_tokens):
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        logits = (mean(a) - mean(b)) - (mean(c) - mean(d))
        out.append((logits - 1 / (2 * beta)) ** 2)
    return out


def ref_simpo_trl(c_avg, r_avg, beta, simpo_gamma, label_smoothing):
    """TRL's CPOTrainer with loss_type="simpo": the margin is subtracted as simpo_gamma / beta before scaling."""
    out = []
    for a, b in zip(c_avg, r_avg):
        logits = (a - b) - simpo_gamma / beta
        out.append((1 - label_smoothing) * softplus(-beta * logits) + label_smoothing * softplus(beta * logits))
    return out


def ref_simpo_paper_repo(c_avg, r_avg, beta, gamma_beta_ratio):
    """The SimPO code base's parameterisation: gamma is given as gamma / beta."""
    return [softplus(-(beta * ((a - b) - gamma_beta_ratio)))for a, b in zip(c_avg, r_avg)]


def random_logps(seed, batch=16):
    gen = torch.Generator().manual_seed(seed)
    # summed log-probs of sequences of ~20 tokens: negative, tens of nats, with realistic spreads
    return [-(torch.rand(batch, generator=gen, dtype=torch.float64) * 40 + 5) for _ in range(4)]


# --------------------------------------------------------------------------------------------------
# Hand-computed 2-pair batches
# --------------------------------------------------------------------------------------------------

# pair 0: h = (-1 - (-4)) - (-2 - (-3)) = 3 - 1 = 2
# pair 1: h = (-4 - (-3)) - (-3 - (-4)) = -1 - 1 = -2
PC, PR, RC, RR = t([-1.0, -4.0]), t([-4.0, -3.0]), t([-2.0, -3.0]), t([-3.0, -4.0])


def test_implicit_rewards_hand_computed():
    # 0.5 * (-1 - (-2)) = 0.5;  0.5 * (-4 - (-3)) = -0.5
    assert_close(implicit_rewards(PC, RC, 0.5), t([0.5, -0.5]))
    # 0.5 * (-4 - (-3)) = -0.5; 0.5 * (-3 - (-4)) = 0.5
    assert_close(implicit_rewards(PR, RR, 0.5), t([-0.5, 0.5]))


def test_dpo_hand_computed():
    # beta = 0.5: beta * h = 1 and -1;  -log sigmoid(x) = log(1 + e^-x)
    out = dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.5)
    assert out.shape == (2,)
    assert_close(out, t([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(1.0))]))
    # conservative DPO, eps = 0.1: 0.9 * (-log sigmoid(beta h)) + 0.1 * (-log sigmoid(-beta h))
    out = dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    expected = [
        0.9 * math.log(1 + math.exp(-1.0)) + 0.1 * math.log(1 + math.exp(1.0)),
        0.9 * math.log(1 + math.exp(1.0)) + 0.1 * math.log(1 + math.exp(-1.0)),
    ]
    assert_close(out, t(expected))
    # eps = 0.5: a coin-flip label gives the same loss for both pairs
    out = dpo_sigmoid_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.5)
    same = 0.5 * math.log(1 + math.exp(-1.0)) + 0.5 * math.log(1 + math.exp(1.0))
    assert_close(out, t([same, same]))


def test_dpo_at_zero_margin_is_log_two():
    x = t([-5.0, -7.0])
    assert_close(dpo_sigmoid_loss(x, x, x, x, beta=0.1), t([math.log(2.0), math.log(2.0)]))
    assert_close(dpo_sigmoid_loss(x, x, x, x, beta=0.1, label_smoothing=0.3), t([math.log(2.0), math.log(2.0)]))


def test_ipo_hand_computed():
    # beta = 0.25: target 1 / (2 * 0.25) = 2
    #   pair 0: h = 2  -> (2 - 2)^2 = 0;  pair 1: h = -2 -> (-2 - 2)^2 = 16
    assert_close(ipo_loss(PC, PR, RC, RR, beta=0.25), t([0.0, 16.0]))
    # beta = 0.1: target 5;  (2 - 5)^2 = 9;  (-2 - 5)^2 = 49
    assert_close(ipo_loss(PC, PR, RC, RR, beta=0.1), t([9.0, 49.0]))


def test_simpo_hand_computed():
    # beta = 2, gamma = 1
    #   pair 0: c - r = -0.5 - (-1.5) = 1     -> h = 2 * 1     - 1 = 1
    #   pair 1: c - r = -1.0 - (-0.75) = -0.25 -> h = 2 * -0.25 - 1 = -1.5
    c, r = t([-0.5, -1.0]), t([-1.5, -0.75])
    out = simpo_loss(c, r, beta=2.0, gamma=1.0)
    assert_close(out, t([math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(1.5))]))
    out = simpo_loss(c, r, beta=2.0, gamma=1.0, label_smoothing=0.2)
    expected = [
        0.8 * math.log(1 + math.exp(-1.0)) + 0.2 * math.log(1 + math.exp(1.0)),
        0.8 * math.log(1 + math.exp(1.5)) + 0.2 * math.log(1 + math.exp(-1.5)),
    ]
    assert_close(out, t(expected))


# --------------------------------------------------------------------------------------------------
# Agreement with the reference implementations on random inputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_dpo_matches_reference(beta, label_smoothing, seed):
    pc, pr, rc, rr = random_logps(seed)
    out = dpo_sigmoid_loss(pc, pr, rc, rr, beta, label_smoothing)
    expected = ref_dpo(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta, label_smoothing)
    assert_close(out, t(expected))


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_ipo_on_length_averaged_logps_matches_trl_layout(beta):
    gen = torch.Generator().manual_seed(3)
    lengths = [3, 9, 1, 14, 6, 20]
    tokens = [[(-torch.rand(n, generator=gen, dtype=torch.float64) * 3).tolist() for n in lengths] for _ in range(4)]
    # chosen and rejected responses of different lengths, as in practice
    tokens[1] = [tok[: max(1, len(tok) // 2)] for tok in tokens[1]]
    tokens[3] = [tok[: max(1, len(tok) // 2)] for tok in tokens[3]]
    avg = [t([sum(tok) / len(tok) for tok in seqs]) for seqs in tokens]
    total = [t([sum(tok) for tok in seqs]) for seqs in tokens]
    expected = t(ref_ipo_trl(*tokens, beta=beta))
    # TRL's IPO equals this IPO applied to per-token-averaged log-probs ...
    assert_close(ipo_loss(*avg, beta=beta), expected)
    # ... and not to the summed log-probs DPO uses
    assert not torch.allclose(ipo_loss(*total, beta=beta), expected)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (2.5, 1.4), (10.0, 3.0), (0.1, 0.05)])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
def test_simpo_matches_trl_and_simpo_repo(beta, gamma, label_smoothing):
    gen = torch.Generator().manual_seed(11)
    c = -torch.rand(16, generator=gen, dtype=torch.float64) * 2
    r = -torch.rand(16, generator=gen, dtype=torch.float64) * 2
    out = simpo_loss(c, r, beta, gamma, label_smoothing)
    # TRL names the margin simpo_gamma and it is the same quantity as this gamma
    assert_close(out, t(ref_simpo_trl(c.tolist(), r.tolist(), beta, simpo_gamma=gamma, label_smoothing=label_smoothing)))
    if label_smoothing == 0.0:
        # the SimPO code base's gamma_beta_ratio is gamma / beta
        assert_close(out, t(ref_simpo_paper_repo(c.tolist(), r.tolist(), beta, gamma_beta_ratio=gamma / beta)))


def test_losses_are_finite_for_extreme_margins():
    big = t([1e4, -1e4])
    zero = torch.zeros(2, dtype=torch.float64)
    out = dpo_sigmoid_loss(big, zero, zero, zero, beta=1.0, label_smoothing=0.1)
    assert torch.isfinite(out).all()
    # h = +1e4: 0.9 * ~0 + 0.1 * 1e4;  h = -1e4: 0.9 * 1e4 + 0.1 * ~0
    assert_close(out, t([0.1 * 1e4, 0.9 * 1e4]))
    assert torch.isfinite(simpo_loss(big, zero, beta=1.0, gamma=0.5)).all()


# --------------------------------------------------------------------------------------------------
# best_of_n
# --------------------------------------------------------------------------------------------------


def test_best_of_n_closed_form_hand_values():
    assert best_of_n_kl_closed_form(1) == 0.0
    assert best_of_n_kl_closed_form(2) == pytest.approx(math.log(2) - 1 / 2)
    assert best_of_n_kl_closed_form(4) == pytest.approx(math.log(4) - 3 / 4)
    assert best_of_n_kl_closed_form(16) == pytest.approx(math.log(16) - 15 / 16)
    with pytest.raises(ValueError):
        best_of_n_kl_closed_form(0)


def test_best_of_n_exact_two_outcomes_hand_computed():
    # outcome 0 is the best (reward 1), p = 0.25; outcome 1 the worst, p = 0.75
    probs, rewards = t([0.25, 0.75]), t([1.0, 0.0])
    # n = 2: pi_2(best) = 1 - (1 - 0.25)^2 = 1 - 0.5625 = 0.4375;  pi_2(worst) = 0.75^2 = 0.5625
    kl2 = 0.4375 * math.log(0.4375 / 0.25) + 0.5625 * math.log(0.5625 / 0.75)
    assert best_of_n_kl_exact(probs, rewards, 2) == pytest.approx(kl2, rel=1e-12)
    # the log-ratios: best F = 0.75, p = 0.25; worst F = 0, p = 0.75
    ratios = best_of_n_log_ratio(torch.log(probs), t([0.75, 0.0]), 2)
    assert_close(ratios, t([math.log(0.4375 / 0.25), math.log(0.5625 / 0.75)]))
    # n = 3: pi_3(best) = 1 - 0.75^3 = 0.578125;  pi_3(worst) = 0.75^3 = 0.421875
    kl3 = 0.578125 * math.log(0.578125 / 0.25) + 0.421875 * math.log(0.421875 / 0.75)
    assert best_of_n_kl_exact(probs, rewards, 3) == pytest.approx(kl3, rel=1e-12)
    # the reward order decides, not the position: swapping rewards makes the 0.75 outcome the best
    # pi_2(best) = 1 - 0.25^2 = 0.9375;  pi_2(worst) = 0.25^2 = 0.0625
    kl2_swapped = 0.9375 * math.log(0.9375 / 0.75) + 0.0625 * math.log(0.0625 / 0.25)
    assert best_of_n_kl_exact(probs, t([0.0, 1.0]), 2) == pytest.approx(kl2_swapped, rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 4, 16])
def test_best_of_n_exact_fine_uniform_is_close_to_and_below_closed_form(n):
    k = 2000
    probs = torch.full((k,), 1.0 / k, dtype=torch.float64)
    rewards = torch.randperm(k, generator=torch.Generator().manual_seed(n)).to(torch.float64)
    exact, closed = best_of_n_kl_exact(probs, rewards, n), best_of_n_kl_closed_form(n)
    assert abs(exact - closed) < 1e-2
    if n == 1:
        assert abs(exact) < 1e-12
    else:
        assert exact < closed


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_of_n_matches_brute_force_enumeration(n, seed):
    gen = torch.Generator().manual_seed(seed)
    k = 4
    probs = torch.rand(k, generator=gen, dtype=torch.float64) + 0.05
    probs = probs / probs.sum()
    rewards = torch.randperm(k, generator=gen).to(torch.float64) * 1.5 - 2.0
    p, r = probs.tolist(), rewards.tolist()
    # pi_n by enumerating all k^n draws and keeping the highest-reward one
    pi_n = [0.0] * k
    for draws in itertools.product(range(k), repeat=n):
        winner = max(draws, key=lambda i: r[i])
        pi_n[winner] += math.prod(p[i] for i in draws)
    kl = sum(q * math.log(q / pk) for q, pk in zip(pi_n, p))
    assert best_of_n_kl_exact(probs, rewards, n) == pytest.approx(kl, rel=1e-10, abs=1e-14)
    below = [sum(p[j] for j in range(k) if r[j] < r[i]) for i in range(k)]
    ratios = best_of_n_log_ratio(torch.log(probs), t(below), n)
    assert_close(ratios, t([math.log(q / pk) for q, pk in zip(pi_n, p)]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_best_of_n_log_ratio_is_stable_for_tiny_probabilities(dtype):
    n = 4
    logp = torch.tensor([math.log(1e-30), math.log(1e-30), math.log(0.3), math.log(0.5)], dtype=dtype)
    below = torch.tensor([0.5, 0.0, 0.0, 1e-300 if dtype == torch.float64 else 1e-40], dtype=dtype)
    out = best_of_n_log_ratio(logp, below, n)
    # p -> 0 with F = 0.5: ((F + p)^n - F^n) / p -> n F^(n-1) = 4 * 0.5^3 = 0.5
    # the lowest outcome (F = 0): pi_n = p^n, ratio p^(n-1): 3 log(1e-30) and 3 log(0.3)
    # F ~ 0 next to p = 0.5: (0.5 + F)^4 - F^4 ~ 0.5^4, ratio 0.5^3
    expected = torch.tensor([math.log(0.5), 3 * math.log(1e-30), 3 * math.log(0.3), 3 * math.log(0.5)], dtype=dtype)
    assert torch.isfinite(out).all()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close(out, expected, rtol=tol, atol=tol)


def test_best_of_n_log_ratio_n_one_is_zero_and_gradients_are_finite():
    logp = torch.tensor([math.log(0.2), math.log(0.3), math.log(1e-20)], dtype=torch.float64, requires_grad=True)
    below = t([0.0, 0.2, 0.5])
    assert_close(best_of_n_log_ratio(logp, below, 1), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    best_of_n_log_ratio(logp, below, 3).sum().backward()
    assert torch.isfinite(logp.grad).all()


def test_best_of_n_errors():
    with pytest.raises(ValueError, match="distinct"):
        best_of_n_kl_exact(t([0.5, 0.25, 0.25]), t([1.0, 2.0, 1.0]), 2)
    with pytest.raises(ValueError, match="distinct"):  # a tie away from the lowest reward too
        best_of_n_kl_exact(t([0.25, 0.25, 0.25, 0.25]), t([0.0, 3.0, 1.0, 3.0]), 2)
    with pytest.raises(ValueError, match="n must be"):
        best_of_n_kl_exact(t([0.5, 0.5]), t([1.0, 2.0]), 0)
    with pytest.raises(ValueError, match="n must be"):
        best_of_n_log_ratio(t([-1.0]), t([0.2]), 0)
    with pytest.raises(ValueError, match="same length"):
        best_of_n_kl_exact(t([0.5, 0.5]), t([1.0, 2.0, 3.0]), 2)
