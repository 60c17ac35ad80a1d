"""n-step returns, RLOO / GRPO group advantages, the EMA baseline and token broadcasting.

Expected numbers are written out as arithmetic, or come from plain Python loops over single rows;
none is obtained by calling the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.ops.advantages import (
    broadcast_to_tokens,
    ema_baseline,
    gae,
    grpo_advantages,
    nstep_returns,
    rloo_advantages,
)

from test_ops_gae import random_batch  # right-padded batches with garbage in the padding


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# nstep_returns
# --------------------------------------------------------------------------------------------------


def test_nstep_hand_computed_two_steps():
    gamma, n = 0.5, 2  # gamma^2 = 0.25
    # row 0: full length 4, r = 1 2 3 4, V = 10 20 30 40
    #   t=0: 1 + 0.5 * 2 + 0.25 * V2 = 1 + 1   + 0.25 * 30 = 9.5
    #   t=1: 2 + 0.5 * 3 + 0.25 * V3 = 2 + 1.5 + 0.25 * 40 = 13.5
    #   t=2: 3 + 0.5 * 4, t+2 = 4 is past the end: no bootstrap   = 5
    #   t=3: 4, the last token                                     = 4
    # row 1: length 3, the fourth position is padding with garbage reward 99 and value 77
    #   t=0: 1 + 0.5 * 2 + 0.25 * V2 = 1 + 1 + 7.5 = 9.5
    #   t=1: 2 + 0.5 * 3, t+2 = 3 is padding: no bootstrap = 3.5
    #   t=2: 3, the last token                              = 3
    rewards = t([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 99.0]])
    values = t([[10.0, 20.0, 30.0, 40.0], [10.0, 20.0, 30.0, 77.0]])
    mask = t([[1, 1, 1, 1], [1, 1, 1, 0]])
    advantages, returns = nstep_returns(rewards, values, mask, gamma, n)
    assert_close(returns, t([[9.5, 13.5, 5.0, 4.0], [9.5, 3.5, 3.0, 0.0]]))
    assert_close(advantages, t([[9.5 - 10, 13.5 - 20, 5.0 - 30, 4.0 - 40], [9.5 - 10, 3.5 - 20, 3.0 - 30, 0.0]]))


def test_nstep_hand_computed_three_steps_bootstraps_from_t_plus_three():
    gamma, n = 0.5, 3  # gamma^3 = 0.125
    # one row of length 5: r = 1 1 1 1 1, V = 0 8 16 24 32
    #   t=0: 1 + 0.5 + 0.25 + 0.125 * V3 = 1.75 + 3 = 4.75
    #   t=1: 1 + 0.5 + 0.25 + 0.125 * V4 = 1.75 + 4 = 5.75
    #   t=2: 1 + 0.5 + 0.25, t+3 = 5 is past the end = 1.75
    #   t=3: 1 + 0.5 = 1.5;  t=4: 1
    rewards = t([[1.0, 1.0, 1.0, 1.0, 1.0]])
    values = t([[0.0, 8.0, 16.0, 24.0, 32.0]])
    mask = torch.ones(1, 5, dtype=torch.float64)
    _, returns = nstep_returns(rewards, values, mask, gamma, n)
    assert_close(returns, t([[4.75, 5.75, 1.75, 1.5, 1.0]]))


def naive_nstep(rewards, values, mask, gamma, n):
    """Plain Python: each row on its own, only over its valid length; value after the last token = 0."""
    batch, steps = rewards.shape
    advantages = [[0.0] * steps for _ in range(batch)]
    returns = [[0.0] * steps for _ in range(batch)]
    for b in range(batch):
        length = int(mask[b].sum().item())
        r = rewards[b].tolist()
        v = values[b].tolist()
        for s in range(length):
            total = 0.0
            for i in range(n):
                if s + i < length:
                    total += gamma**i * r[s + i]
            if s + n < length:
                total += gamma**n * v[s + n]
            returns[b][s] = total
            advantages[b][s] = total - v[s]
    return torch.tensor(advantages, dtype=torch.float64), torch.tensor(returns, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 11, 12, 50])
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.5, 0.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_nstep_matches_naive_loop(n, gamma, seed):
    rewards, values, mask = random_batch(seed)
    advantages, returns = nstep_returns(rewards, values, mask, gamma, n)
    expected_adv, expected_ret = naive_nstep(rewards, values, mask, gamma, n)
    assert_close(advantages, expected_adv)
    assert_close(returns, expected_ret)
    valid = mask.bool()
    assert (returns[~valid] == 0).all()
    assert (advantages[~valid] == 0).all()


def test_nstep_float32_matches_naive_loop():
    rewards, values, mask = random_batch(3)
    advantages, returns = nstep_returns(rewards.float(), values.float(), mask.float(), 0.9, 4)
    expected_adv, expected_ret = naive_nstep(rewards, values, mask, 0.9, 4)
    assert advantages.dtype == torch.float32
    assert_close(advantages.double(), expected_adv, rtol=1e-5, atol=1e-5)
    assert_close(returns.double(), expected_ret, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 0.95, 0.5])
def test_nstep_large_n_is_the_monte_carlo_return(gamma):
    rewards, values, mask = random_batch(4)
    valid = mask.bool()
    r = (rewards * mask).tolist()
    steps = rewards.shape[1]
    # discounted reward-to-go, accumulated backwards per row (padding rewards are already zeroed)
    mc = [[0.0] * steps for _ in r]
    for b, row in enumerate(r):
        running = 0.0
        for s in reversed(range(steps)):
            running = row[s] + gamma * running
            mc[b][s] = running
    mc = t(mc) * mask
    for n in (steps, steps + 1, 1000):
        advantages, returns = nstep_returns(rewards, values, mask, gamma, n)
        assert_close(returns, mc)
        assert_close(advantages[valid], (mc - values)[valid])
    # the same as GAE with lambda = 1 (independently tested in test_ops_gae.py)
    _, gae_returns = gae(rewards, values, mask, gamma, 1.0)
    assert_close(nstep_returns(rewards, values, mask, gamma, steps)[1], gae_returns)


def test_nstep_one_step_is_the_td_target():
    gamma = 0.8
    rewards, values, mask = random_batch(5)
    valid = mask.bool()
    r, v = rewards * mask, values * mask
    # V(s_{t+1}), 0 after the last valid token
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    advantages, returns = nstep_returns(rewards, values, mask, gamma, 1)
    assert_close(returns[valid], (r + gamma * next_v)[valid])
    assert_close(advantages[valid], (r + gamma * next_v - v)[valid])
    # the same as GAE with lambda = 0 (one-step TD error)
    gae_advantages, _ = gae(rewards, values, mask, gamma, 0.0)
    assert_close(advantages, gae_advantages)


def test_nstep_accepts_bool_mask_and_does_not_modify_inputs():
    rewards, values, mask = random_batch(6)
    copies = rewards.clone(), values.clone(), mask.clone()
    advantages, returns = nstep_returns(rewards, values, mask.bool(), 0.9, 3)
    expected_adv, expected_ret = naive_nstep(rewards, values, mask, 0.9, 3)
    assert_close(advantages, expected_adv)
    assert_close(returns, expected_ret)
    for before, after in zip(copies, (rewards, values, mask)):
        assert torch.equal(before, after)


def test_nstep_rejects_n_below_one():
    rewards, values, mask = random_batch(0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        nstep_returns(rewards, values, mask, 0.9, 0)


# --------------------------------------------------------------------------------------------------
# rloo_advantages / grpo_advantages
# --------------------------------------------------------------------------------------------------


def test_rloo_hand_computed():
    # k = 3, two prompts: scores 1 2 6 | 0 3 3
    #   1 - (2 + 6) / 2 = -3     2 - (1 + 6) / 2 = -1.5     6 - (1 + 2) / 2 = 4.5
    #   0 - (3 + 3) / 2 = -3     3 - (0 + 3) / 2 =  1.5     3 - (0 + 3) / 2 = 1.5
    out = rloo_advantages(t([1.0, 2.0, 6.0, 0.0, 3.0, 3.0]), group_size=3)
    assert_close(out, t([-3.0, -1.5, 4.5, -3.0, 1.5, 1.5]))


def test_rloo_with_pairs_is_the_difference():
    # k = 2: the baseline is the other sample, so the advantages are +-(difference)
    out = rloo_advantages(t([5.0, 2.0, -1.0, 1.0]), group_size=2)
    assert_close(out, t([5.0 - 2.0, 2.0 - 5.0, -1.0 - 1.0, 1.0 - (-1.0)]))


def naive_group_loop(scores, k, kind, eps=1e-4):
    """Plain Python over each group of k consecutive scores."""
    values = scores.tolist()
    out = []
    for start in range(0, len(values), k):
        group = values[start : start + k]
        for i, x in enumerate(group):
            if kind == "rloo":
                others = group[:i] + group[i + 1 :]
                out.append(x - sum(others) / len(others))
            else:
                mean = sum(group) / k
                std = math.sqrt(sum((y - mean) ** 2 for y in group) / (k - 1))
                out.append((x - mean) / (std + eps) if kind == "grpo" else x - mean)
    return t(out)


@pytest.mark.parametrize("k", [2, 3, 4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_group_advantages_match_naive_loop(k, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(5 * k, generator=gen, dtype=torch.float64) * 3 + 1
    assert_close(rloo_advantages(scores, k), naive_group_loop(scores, k, "rloo"))
    assert_close(grpo_advantages(scores, k), naive_group_loop(scores, k, "grpo"))
    assert_close(grpo_advantages(scores, k, scale_by_std=False), naive_group_loop(scores, k, "drgrpo"))
    assert_close(grpo_advantages(scores, k, eps=0.5), naive_group_loop(scores, k, "grpo", eps=0.5))


def test_grpo_hand_computed():
    # group 1 2 3 6: mean 3, deviations -2 -1 0 3, squared sum 4 + 1 + 0 + 9 = 14
    #   sample (unbiased) std = sqrt(14 / 3), not the population sqrt(14 / 4)
    # group 5 5 5 5: std 0, so eps keeps the result at 0 instead of NaN
    scores = t([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0])
    std = math.sqrt(14.0 / 3.0)
    out = grpo_advantages(scores, group_size=4, eps=1e-4)
    expected = [-2.0 / (std + 1e-4), -1.0 / (std + 1e-4), 0.0, 3.0 / (std + 1e-4), 0.0, 0.0, 0.0, 0.0]
    assert_close(out, t(expected))
    # the default eps is 1e-4
    assert_close(grpo_advantages(scores, group_size=4), t(expected))
    # Dr. GRPO: only the group mean is subtracted
    assert_close(grpo_advantages(scores, group_size=4, scale_by_std=False), t([-2.0, -1.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("fn", [rloo_advantages, grpo_advantages])
def test_group_errors(fn):
    with pytest.raises(ValueError, match=r"(?=.*\b5\b)(?=.*\b2\b)"):
        fn(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="group_size"):
        fn(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.zeros(2, 4), 2)


def test_group_advantages_sum_to_zero_per_group():
    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(24, generator=gen, dtype=torch.float64)
    for out in (rloo_advantages(scores, 4), grpo_advantages(scores, 4), grpo_advantages(scores, 4, scale_by_std=False)):
        assert_close(out.view(-1, 4).sum(1), torch.zeros(6, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# ema_baseline / broadcast_to_tokens
# --------------------------------------------------------------------------------------------------


def test_ema_baseline():
    # first batch: the batch mean itself
    assert ema_baseline(None, 3.0, 0.9) == 3.0
    # 0.9 * 2 + 0.1 * 4 = 1.8 + 0.4 = 2.2
    assert ema_baseline(2.0, 4.0, 0.9) == pytest.approx(2.2)
    # 0.5 * 2.2 + 0.5 * 1.0 = 1.6
    assert ema_baseline(2.2, 1.0, 0.5) == pytest.approx(1.6)
    # decay 0 forgets the past, decay 1 never moves
    assert ema_baseline(2.0, 4.0, 0.0) == pytest.approx(4.0)
    assert ema_baseline(2.0, 4.0, 1.0) == pytest.approx(2.0)
    assert isinstance(ema_baseline(None, 3, 0.9), float)


def test_broadcast_to_tokens():
    out = broadcast_to_tokens(t([1.5, -2.0, 0.25]), torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]]))
    assert out.dtype == torch.float64
    assert_close(out, t([[1.5, 1.5, 0.0], [-2.0, -2.0, -2.0], [0.25, 0.0, 0.0]]))
    out = broadcast_to_tokens(t([3.0]), torch.tensor([[True, False]]))
    assert_close(out, t([[3.0, 0.0]]))
