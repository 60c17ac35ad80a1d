"""Hand-computed checks for the pure tensor functions in rlhf_lab/ops/.

Every expected number below is written out as arithmetic (or math.exp / math.log expressions), never
obtained by calling the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.ops.kl import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3
from rlhf_lab.ops.losses import (
    bradley_terry_loss,
    clipped_value_loss,
    explained_variance,
    pointwise_mse_loss,
    ppo_policy_loss,
)
from rlhf_lab.ops.masked import masked_mean, masked_sum, masked_var, masked_whiten
from rlhf_lab.ops.sampling import filter_logits, sample_next_token
from rlhf_lab.ops.sequence import (
    entropy_from_logits,
    last_token_index,
    position_ids_from_mask,
    token_logprobs,
    truncate_after_eos,
)

NEG_INF = float("-inf")


def t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# masked.py
# --------------------------------------------------------------------------------------------------

# Valid entries are 1, 2, 5, 6; the masked ones hold 100 and -50 to show they are ignored.
VALUES = [[1.0, 2.0, 100.0], [-50.0, 5.0, 6.0]]
MASK = [[1, 1, 0], [0, 1, 1]]
# mean = (1 + 2 + 5 + 6) / 4 = 3.5
# squared deviations: 2.5^2, 1.5^2, 1.5^2, 2.5^2 = 6.25, 2.25, 2.25, 6.25 -> sum 17
MEAN = 14.0 / 4.0
SSQ = 6.25 + 2.25 + 2.25 + 6.25


def test_masked_sum_and_mean_ignore_masked_entries():
    v, m = t(VALUES), t(MASK)
    assert_close(masked_sum(v, m), t(1.0 + 2.0 + 5.0 + 6.0))
    assert_close(masked_mean(v, m), t(MEAN))
    # per row: (1 + 2) / 2 and (5 + 6) / 2
    assert_close(masked_mean(v, m, dim=1), t([1.5, 5.5]))
    # per column: 1 / 1, (2 + 5) / 2, 6 / 1
    assert_close(masked_mean(v, m, dim=0), t([1.0, 3.5, 6.0]))


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    assert_close(masked_mean(t([3.0, 4.0]), t([0, 0])), t(0.0))


def test_masked_var_biased_and_unbiased():
    v, m = t(VALUES), t(MASK)
    assert_close(masked_var(v, m, unbiased=False), t(SSQ / 4))  # 4.25
    assert_close(masked_var(v, m, unbiased=True), t(SSQ / 3))  # 17 / 3
    assert_close(masked_var(v, m), t(SSQ / 3))  # unbiased is the default


def test_masked_whiten_shift_mean_true():
    v, m = t(VALUES), t(MASK)
    std = math.sqrt(SSQ / 3)  # whitening uses the unbiased variance
    expected = t([[(1 - 3.5) / std, (2 - 3.5) / std, 0.0], [0.0, (5 - 3.5) / std, (6 - 3.5) / std]])
    out = masked_whiten(v, m, eps=0.0)
    assert_close(out, expected)
    # masked entries are exactly 0
    assert out[0, 2].item() == 0.0 and out[1, 0].item() == 0.0
    # the valid entries have mean 0 and (unbiased) std 1
    valid = out[m.bool()]
    assert_close(valid.mean(), t(0.0))
    assert_close(valid.std(), t(1.0))


def test_masked_whiten_shift_mean_false_keeps_mean():
    v, m = t(VALUES), t(MASK)
    std = math.sqrt(SSQ / 3)
    # (x - mean) / std + mean, masked entries 0
    expected = t([
        [(1 - 3.5) / std + 3.5, (2 - 3.5) / std + 3.5, 0.0],
        [0.0, (5 - 3.5) / std + 3.5, (6 - 3.5) / std + 3.5],
    ])
    out = masked_whiten(v, m, shift_mean=False, eps=0.0)
    assert_close(out, expected)
    assert out[0, 2].item() == 0.0 and out[1, 0].item() == 0.0
    valid = out[m.bool()]
    assert_close(valid.mean(), t(3.5))
    assert_close(valid.std(), t(1.0))


def test_masked_whiten_eps_default_is_tiny():
    v, m = t(VALUES), t(MASK)
    assert_close(masked_whiten(v, m), masked_whiten(v, m, eps=0.0), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# kl.py
# --------------------------------------------------------------------------------------------------


def test_kl_estimators_hand_values():
    # token 1: p = 0.5, ref = 0.25 -> log_ratio = log 2
    # token 2: p = 0.2, ref = 0.6  -> log_ratio = log(1/3) = -log 3
    logp = t([math.log(0.5), math.log(0.2)])
    ref = t([math.log(0.25), math.log(0.6)])
    assert_close(kl_k1(logp, ref), t([math.log(2), -math.log(3)]))
    assert_close(kl_k2(logp, ref), t([0.5 * math.log(2) ** 2, 0.5 * math.log(3) ** 2]))
    # k3 = (ref/p - 1) - log(ref/p): (0.5 - 1) + log 2 and (3 - 1) - log 3
    assert_close(kl_k3(logp, ref), t([-0.5 + math.log(2), 2.0 - math.log(3)]))
    assert KL_ESTIMATORS == {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def test_kl_k3_and_k2_nonnegative_and_zero_at_equality():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(200, generator=gen, dtype=torch.float64) * 3
    ref = torch.randn(200, generator=gen, dtype=torch.float64) * 3
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k2(logp, ref) >= 0).all()
    assert (kl_k1(logp, ref) < 0).any()  # k1 can be negative per token
    assert_close(kl_k3(logp, logp), torch.zeros_like(logp))


# --------------------------------------------------------------------------------------------------
# losses.py
# --------------------------------------------------------------------------------------------------


def _policy_inputs(ratios, advantages, mask):
    old = torch.full((1, len(ratios)), math.log(0.3), dtype=torch.float64)
    logp = (old + torch.log(t([ratios]))).requires_grad_(True)
    return logp, old, t([advantages]), t([mask])


def test_ppo_policy_loss_clip_inactive():
    # ratios 1.1 and 0.9 lie inside [0.8, 1.2]; the third token is masked out.
    logp, old, adv, mask = _policy_inputs([1.1, 0.9, 7.0], [2.0, -1.0, 123.0], [1, 1, 0])
    out = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    # per token: -A * r = -2 * 1.1 = -2.2 and -(-1) * 0.9 = 0.9
    assert_close(out.loss, t((-2.2 + 0.9) / 2))
    assert_close(out.clipfrac, t(0.0))
    # approx_kl = mean(r - 1 - log r) (k3 of KL(old || new))
    assert_close(out.approx_kl, t(((1.1 - 1 - math.log(1.1)) + (0.9 - 1 - math.log(0.9))) / 2))
    # gradient of the loss w.r.t. logp: -A * r / n on valid tokens, 0 on the masked one
    out.loss.backward()
    assert_close(logp.grad, t([[-2.0 * 1.1 / 2, 1.0 * 0.9 / 2, 0.0]]))


def test_ppo_policy_loss_clip_active():
    # clip_range 0.2; token by token:
    #  r=1.5, A=+1: unclipped -1.5, clipped -1.2 -> max -1.2 (clipped)
    #  r=0.5, A=-1: unclipped  0.5, clipped  0.8 -> max  0.8 (clipped)
    #  r=1.5, A=-1: unclipped  1.5, clipped  1.2 -> max  1.5 (unclipped, pessimistic)
    #  r=0.5, A=+1: unclipped -0.5, clipped -0.8 -> max -0.5 (unclipped)
    #  masked token with garbage
    logp, old, adv, mask = _policy_inputs([1.5, 0.5, 1.5, 0.5, 9.0], [1.0, -1.0, -1.0, 1.0, -50.0], [1, 1, 1, 1, 0])
    out = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    assert_close(out.loss, t((-1.2 + 0.8 + 1.5 - 0.5) / 4))  # 0.15
    assert_close(out.clipfrac, t(2 / 4))
    # mean of r - 1 - log r over r = 1.5, 0.5, 1.5, 0.5 = (0.5 - log 1.5 - 0.5 - log 0.5) / 2
    assert_close(out.approx_kl, t((math.log(2) - math.log(1.5)) / 2))
    # no gradient flows through the clipped tokens; the others get -A * r / 4
    out.loss.backward()
    assert_close(logp.grad, t([[0.0, 0.0, 1.0 * 1.5 / 4, -1.0 * 0.5 / 4, 0.0]]))


def test_ppo_policy_loss_ratio_one_is_minus_mean_advantage():
    logp, old, adv, mask = _policy_inputs([1.0, 1.0, 1.0], [0.5, -2.0, 4.0], [1, 1, 0])
    out = ppo_policy_loss(logp, old, adv, mask, clip_range=0.2)
    assert_close(out.loss, t(-(0.5 - 2.0) / 2))
    assert_close(out.clipfrac, t(0.0))
    assert_close(out.approx_kl, t(0.0))


def test_clipped_value_loss():
    # clip_range 0.25 (exact in binary); token by token (v, v_old, R):
    #  (1.0, 0.5, 2.0): v clipped to 0.75; errors (1-2)^2 = 1 and (0.75-2)^2 = 1.5625 -> 1.5625, clipped
    #  (0.5, 0.375, 0.0): |v - v_old| = 0.125 < 0.25, both errors 0.25 -> 0.25, not clipped
    #  (1.0, 0.0, 0.0): v clipped to 0.25; errors 1 and 0.0625 -> 1.0, not clipped
    #  masked token with garbage
    values = t([[1.0, 0.5, 1.0, 30.0]])
    old = t([[0.5, 0.375, 0.0, -30.0]])
    returns = t([[2.0, 0.0, 0.0, 7.0]])
    mask = t([[1, 1, 1, 0]])
    loss, clipfrac = clipped_value_loss(values, old, returns, mask, clip_range=0.25)
    assert_close(loss, t(0.5 * (1.5625 + 0.25 + 1.0) / 3))  # 0.46875
    assert_close(clipfrac, t(1 / 3))


def test_bradley_terry_loss():
    # -log sigmoid(2 - 1) = log(1 + e^-1); -log sigmoid(0 - 1) = log(1 + e^1)
    loss = bradley_terry_loss(t([2.0, 0.0]), t([1.0, 1.0]))
    assert_close(loss, t((math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2))
    # equal scores: -log(1/2) = log 2
    assert_close(bradley_terry_loss(t([0.3, -4.0]), t([0.3, -4.0])), t(math.log(2)))


def test_pointwise_mse_loss():
    # errors 0, 2, -2 -> (0 + 4 + 4) / 3
    assert_close(pointwise_mse_loss(t([1.0, 2.0, 3.0]), t([1.0, 0.0, 5.0])), t(8.0 / 3.0))


def test_explained_variance():
    target = t([1.0, 2.0, 3.0, 4.0, 1000.0])
    mask = t([1, 1, 1, 1, 0])
    # perfect prediction -> 1 (whatever sits in the masked slot)
    assert_close(explained_variance(t([1.0, 2.0, 3.0, 4.0, -7.0]), target, mask), t(1.0))
    # constant offset: residual has zero variance -> 1
    assert_close(explained_variance(t([2.0, 3.0, 4.0, 5.0, 0.0]), target, mask), t(1.0))
    # predicting 0: residual = target -> 0
    assert_close(explained_variance(t([0.0, 0.0, 0.0, 0.0, 0.0]), target, mask), t(0.0))
    # residual [0, 0, 0, 1]: mean 0.25, var = (3 * 0.0625 + 0.5625) / 4 = 0.1875
    # var(target) = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25  -> 1 - 0.1875 / 1.25 = 0.85
    assert_close(explained_variance(t([1.0, 2.0, 3.0, 3.0, 0.0]), target, mask), t(1 - 0.1875 / 1.25))


# --------------------------------------------------------------------------------------------------
# sequence.py
# --------------------------------------------------------------------------------------------------


def test_token_logprobs():
    # row 0: logits [1, 2, 3], token 2 -> 3 - log(e + e^2 + e^3); logits [0, 0, 0], token 0 -> -log 3
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    tokens = torch.tensor([[2, 0]])
    expected = torch.tensor([[3 - math.log(math.exp(1) + math.exp(2) + math.exp(3)), -math.log(3)]])
    out = token_logprobs(logits, tokens)
    assert out.shape == (1, 2)
    assert_close(out, expected.float())


def test_token_logprobs_upcasts_half_precision():
    logits = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.tensor([[0]]))
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([[1 - math.log(math.exp(1) + math.exp(2) + math.exp(3))]]), atol=1e-6, rtol=1e-6)


def test_entropy_from_logits():
    # uniform over V = 5 -> log 5, whatever the constant logit;
    # probs [1/2, 1/4, 1/4] -> 1/2 log 2 + 2 * 1/4 log 4 = 1.5 log 2;
    # probs [0.7, 0.2, 0.1] -> -(0.7 log 0.7 + 0.2 log 0.2 + 0.1 log 0.1)
    uniform = torch.tensor([[[0.0] * 5, [3.0] * 5]])
    assert_close(entropy_from_logits(uniform), torch.tensor([[math.log(5), math.log(5)]]))
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.7, 0.2, 0.1]]]))
    expected = [1.5 * math.log(2), -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))]
    assert_close(entropy_from_logits(logits), torch.tensor([expected]))
    # shifting all logits by a constant changes nothing
    assert_close(entropy_from_logits(logits + 10.0), torch.tensor([expected]))


def test_position_ids_from_mask_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    # first real token is position 0; padding before it is clamped to 0
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])
    assert torch.equal(position_ids_from_mask(mask), expected)


def test_position_ids_from_mask_prompt_then_response():
    # left-padded prompt of 2 tokens, then 3 response tokens of which the last is padding
    mask = torch.tensor([[0, 1, 1, 1, 1, 0]])
    assert torch.equal(position_ids_from_mask(mask), torch.tensor([[0, 0, 1, 2, 3, 3]]))


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 0, 4]
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(left).tolist() == [4, 4, 4]
    # left-padded prompt followed by a right-padded response
    both = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    assert last_token_index(both).tolist() == [3, 5]


def test_truncate_after_eos():
    eos, pad = 9, 0
    tokens = torch.tensor([
        [5, 9, 7, 9],  # EOS at 1; later tokens (including a second EOS) become pad
        [9, 4, 4, 4],  # EOS first
        [3, 4, 5, 6],  # no EOS: everything kept
        [3, 4, 5, 9],  # EOS last
    ])
    out, mask, has_eos = truncate_after_eos(tokens, eos, pad)
    assert out.tolist() == [[5, 9, 0, 0], [9, 0, 0, 0], [3, 4, 5, 6], [3, 4, 5, 9]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, False, True]
    assert tokens.tolist()[0] == [5, 9, 7, 9]  # input not modified in place


# --------------------------------------------------------------------------------------------------
# sampling.py
# --------------------------------------------------------------------------------------------------


def _kept(logits):
    return (logits > NEG_INF).tolist()


def test_filter_logits_top_k():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5], [4.0, -1.0, 0.0, 5.0]])
    out = filter_logits(logits, top_k=2)
    assert _kept(out) == [[False, True, True, False], [True, False, False, True]]
    # kept logits are unchanged
    assert out[0, 1].item() == 3.0 and out[0, 2].item() == 2.0
    # top_k = 0 and top_k >= V disable the filter
    assert torch.equal(filter_logits(logits, top_k=0), logits)
    assert torch.equal(filter_logits(logits, top_k=4), logits)
    assert torch.equal(filter_logits(logits, top_k=10), logits)


def test_filter_logits_top_p():
    # probabilities 0.5, 0.3, 0.15, 0.05, given in a shuffled order to exercise the un-sorting
    # vocab order:    [0.15, 0.5, 0.05, 0.3]
    # mass strictly before each token in sorted order: 0.5 -> 0, 0.3 -> 0.5, 0.15 -> 0.8, 0.05 -> 0.95
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    # top_p 0.75: keep while mass before < 0.75 -> {0.5, 0.3}
    assert _kept(filter_logits(logits, top_p=0.75)) == [[False, True, False, True]]
    # top_p 0.85: 0.8 < 0.85 too -> {0.5, 0.3, 0.15}
    assert _kept(filter_logits(logits, top_p=0.85)) == [[True, True, False, True]]
    # top_p 0.4: 0.5 >= 0.4 already before the second token -> only the most likely
    assert _kept(filter_logits(logits, top_p=0.4)) == [[False, True, False, False]]
    # a tiny top_p still keeps the most likely token
    assert _kept(filter_logits(logits, top_p=1e-6)) == [[False, True, False, False]]
    # top_p 1.0 disables
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)
    # kept logits are unchanged
    assert_close(filter_logits(logits, top_p=0.75)[0, 3], logits[0, 3])


def test_filter_logits_top_p_after_top_k():
    # probs [0.5, 0.3, 0.15, 0.05]; top_k = 3 renormalises to [0.5, 0.3, 0.15] / 0.95,
    # so the mass before the third token becomes 0.8 / 0.95 = 0.842 > 0.82: it is dropped,
    # whereas top_p = 0.82 alone (mass before = 0.8) keeps it.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert _kept(filter_logits(logits, top_p=0.82)) == [[True, True, True, False]]
    assert _kept(filter_logits(logits, top_k=3, top_p=0.82)) == [[True, True, False, False]]


def test_sample_next_token_greedy_and_top_k_one():
    logits = torch.tensor([[0.1, 0.2, 0.15, 0.0], [2.0, -1.0, 1.9, 0.0], [0.0, 0.0, 0.0, 0.01]])
    argmax = [1, 0, 3]
    assert sample_next_token(logits, temperature=0, top_k=0, top_p=1.0, generator=None).tolist() == argmax
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        assert sample_next_token(logits, temperature=1.0, top_k=1, top_p=1.0, generator=gen).tolist() == argmax
        assert sample_next_token(logits, temperature=2.5, top_k=1, top_p=1.0, generator=gen).tolist() == argmax


def test_sample_next_token_samples_only_kept_tokens_and_is_seeded():
    # near-uniform logits: without filtering several tokens are drawn; with top_k = 2 only the two best
    logits = torch.tensor([[0.0, 0.3, 0.2, 0.1]]).repeat(400, 1)
    drawn = sample_next_token(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(1))
    assert len(set(drawn.tolist())) == 4
    drawn_k = sample_next_token(logits, 1.0, 2, 1.0, torch.Generator().manual_seed(1))
    assert set(drawn_k.tolist()) == {1, 2}
    again = sample_next_token(logits, 1.0, 0, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, again)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sample_next_token_temperature_changes_distribution(temperature):
    # p(token 1) under logits [0, 1] at temperature T is e^(1/T) / (1 + e^(1/T))
    logits = torch.tensor([[0.0, 1.0]]).repeat(20000, 1)
    drawn = sample_next_token(logits, temperature, 0, 1.0, torch.Generator().manual_seed(0))
    p1 = math.exp(1 / temperature) / (1 + math.exp(1 / temperature))
    freq = drawn.float().mean().item()
    # standard error sqrt(p(1-p)/n) < 0.004; allow 5 of them
    assert abs(freq - p1) < 0.02


def test_masked_whiten_over_ranks_uses_the_statistics_of_the_whole_batch():
    # Two ranks hold one row each; whitening rank 0's row must use the mean and variance of both rows.
    v, m = t(VALUES), t(MASK)

    def local_sums(values, mask):
        return torch.stack([(values * mask).sum(), (values * values * mask).sum(), mask.sum()])

    other_rank = local_sums(v[1:], m[1:])
    on_rank_0 = masked_whiten(v[:1], m[:1], all_reduce_sum=lambda sums: sums + other_rank)
    # mean 3.5 and Bessel variance 17 / 3 of all four valid entries (see MEAN, SSQ above)
    expected = (t([1.0, 2.0]) - MEAN) / math.sqrt(SSQ / 3 + 1e-8)
    assert_close(on_rank_0[0, :2], expected)
    assert on_rank_0[0, 2] == 0
    # the single-process path gives the same numbers on the whole batch
    assert_close(masked_whiten(v, m)[0, :2], expected)


def test_gumbel_max_draws_follow_the_softmax_and_skip_filtered_tokens():
    """40000 draws from softmax([log .5, log .3, log .2, -inf]): shares within 0.01 of the probabilities
    (4 standard errors at most), the -inf token never, and a seeded generator repeats its draws."""
    from rlhf_lab.ops.sampling import gumbel_max

    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2), float("-inf")]]).expand(40000, 4)
    draws = gumbel_max(logits, torch.Generator().manual_seed(0))
    assert draws.shape == (40000, 1)
    shares = torch.bincount(draws[:, 0], minlength=4).float() / 40000
    assert torch.allclose(shares, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.01)
    assert shares[3] == 0
    again = gumbel_max(logits, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    # A shift of every logit by a constant is the same distribution: the same draws.
    assert torch.equal(gumbel_max(logits + 3.0, torch.Generator().manual_seed(0)), draws)
