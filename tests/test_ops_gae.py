"""rlhf_lab.ops.advantages.gae against a hand-computed example and a naive per-sequence loop."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.ops.advantages import gae


def test_gae_hand_computed_three_steps():
    gamma, lam = 0.9, 0.5  # gamma * lam = 0.45
    # row 0: full length 3
    #   t=2: delta = 2 + 0.9 * 0   - 1.5 = 0.5                  A2 = 0.5
    #   t=1: delta = 0 + 0.9 * 1.5 - 1.0 = 0.35                 A1 = 0.35 + 0.45 * 0.5   = 0.575
    #   t=0: delta = 1 + 0.9 * 1.0 - 0.5 = 1.4                  A0 = 1.4  + 0.45 * 0.575 = 1.65875
    # row 1: same first two steps, third position is padding (garbage reward 99 and value 77)
    #   t=1 is the last token, the value after it is 0: delta = 0 + 0 - 1.0 = -1.0   A1 = -1.0
    #   t=0: delta = 1 + 0.9 * 1.0 - 0.5 = 1.4                  A0 = 1.4 + 0.45 * (-1.0) = 0.95
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 99.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.0, 77.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected_adv = torch.tensor([[1.65875, 0.575, 0.5], [0.95, -1.0, 0.0]], dtype=torch.float64)
    # returns = A + V on valid tokens, 0 on padding
    expected_ret = torch.tensor([[1.65875 + 0.5, 0.575 + 1.0, 0.5 + 1.5], [0.95 + 0.5, -1.0 + 1.0, 0.0]], dtype=torch.float64)
    assert_close(advantages, expected_adv)
    assert_close(returns, expected_ret)


def naive_gae(rewards, values, mask, gamma, lam):
    """Plain Python: each row on its own, only over its valid length; value after the last token = 0."""
    batch, steps = rewards.shape
    advantages = [[0.0] * steps for _ in range(batch)]
    returns = [[0.0] * steps for _ in range(batch)]
    for b in range(batch):
        length = int(mask[b].sum().item())
        r = rewards[b].tolist()
        v = values[b].tolist()
        running = 0.0
        for i in reversed(range(length)):
            next_value = v[i + 1] if i + 1 < length else 0.0
            delta = r[i] + gamma * next_value - v[i]
            running = delta + gamma * lam * running
            advantages[b][i] = running
            returns[b][i] = running + v[i]
    return torch.tensor(advantages, dtype=torch.float64), torch.tensor(returns, dtype=torch.float64)


def random_batch(seed, batch=7, steps=11):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(batch, steps, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, steps, generator=gen, dtype=torch.float64)
    # varying valid lengths with right padding, including length 1 and the full length
    lengths = [1, steps, 3, steps - 1, 5, 2, 7][:batch]
    mask = (torch.arange(steps).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).to(torch.float64)
    # large garbage in the padding: it must not leak into the valid positions
    rewards = torch.where(mask.bool(), rewards, torch.full_like(rewards, 1e3))
    values = torch.where(mask.bool(), values, torch.full_like(values, -1e3))
    return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.5, 0.7), (0.0, 0.95)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_naive_loop(gamma, lam, seed):
    rewards, values, mask = random_batch(seed)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected_adv, expected_ret = naive_gae(rewards, values, mask, gamma, lam)
    assert_close(advantages, expected_adv)
    assert_close(returns, expected_ret)
    # returns == advantages + values on valid positions, 0 on padding
    valid = mask.bool()
    assert_close(returns[valid], (advantages + values)[valid])
    assert (returns[~valid] == 0).all()
    assert (advantages[~valid] == 0).all()


def test_gae_float32_matches_naive_loop():
    rewards, values, mask = random_batch(3)
    advantages, returns = gae(rewards.float(), values.float(), mask.float(), 1.0, 0.95)
    expected_adv, expected_ret = naive_gae(rewards, values, mask, 1.0, 0.95)
    assert advantages.dtype == torch.float32
    assert_close(advantages.double(), expected_adv, rtol=1e-5, atol=1e-5)
    assert_close(returns.double(), expected_ret, rtol=1e-5, atol=1e-5)


def test_gae_limits_lambda_one_and_zero():
    rewards, values, mask = random_batch(4)
    valid = mask.bool()
    r, v = rewards * mask, values * mask
    # gamma = lam = 1: A_t = (sum of rewards from t to the end) - V_t (Monte Carlo advantage)
    advantages, returns = gae(rewards, values, mask, 1.0, 1.0)
    reward_to_go = r.flip(-1).cumsum(-1).flip(-1)
    assert_close(advantages[valid], (reward_to_go - v)[valid])
    assert_close(returns[valid], reward_to_go[valid])
    # lam = 0: A_t = r_t + gamma * V_{t+1} - V_t (one-step TD error), V after the last token = 0
    gamma = 0.8
    advantages, _ = gae(rewards, values, mask, gamma, 0.0)
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1) * torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    assert_close(advantages[valid], (r + gamma * next_v - v)[valid])


def test_gae_does_not_modify_inputs():
    rewards, values, mask = random_batch(5)
    copies = rewards.clone(), values.clone(), mask.clone()
    gae(rewards, values, mask, 1.0, 0.95)
    for before, after in zip(copies, (rewards, values, mask)):
        assert torch.equal(before, after)
