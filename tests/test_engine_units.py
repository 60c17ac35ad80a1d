"""Unit tests of the engine pieces around the algorithms: the KV-cache sampler, KL controllers,
reward-batch collation and losses, the cycling sampler and the win rate.

The sampler is checked against an independent reference: a naive greedy loop that re-runs the whole
sequence every step without a cache. Expected numbers elsewhere are written out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.algos.kl_control import AdaptiveKLController, FixedKLController, build_kl_controller
from rlhf_lab.algos.on_policy import CyclingSampler
from rlhf_lab.data import collate_prompt_groups, encode_prompt, encode_response, pad_left
from rlhf_lab.records import PreferenceRecord
from rlhf_lab.models.loading import load_policy, load_tokenizer
from rlhf_lab.ops.sequence import position_ids_from_mask, shared_prompt_mask
from rlhf_lab.rewards.base import RewardObjective
from rlhf_lab.rewards.configs import PairwiseRewardConfig, PointwiseRewardConfig
from rlhf_lab.rewards.pairwise import PairwiseObjective
from rlhf_lab.rewards.pointwise import PointwiseObjective
from rlhf_lab.rollout import generate, sample_responses
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

# Prompts of different token lengths (7, 9, 5, 5 tokens with the toy tokenizer), so the batch is left-padded.
PROMPTS = [
    "tell me about the old cat .",
    "what do you think of the famous market ?",
    "describe the red river .",
    "describe the quiet garden .",
]
MAX_NEW = 6
NEVER = -1
"""An EOS id no token can equal: generation runs the full ``max_new_tokens``."""


# --------------------------------------------------------------------------------------------------
# Fixtures and the reference decoder
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_base")
    make_toy_task(ToyTaskConfig(num_sft_examples=100), seed=0).build_base_model(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(toy_dir):
    return load_tokenizer(str(toy_dir))


@pytest.fixture(scope="module")
def model(toy_dir):
    """The toy GPT-2 with its matrices re-drawn at std 0.1 (seeded).

    At the default init (std 0.02) greedy decoding repeats one token forever, so a cached decoder
    that ignored its own history, or got positions wrong, could still match the reference. With
    larger weights the greedy continuations vary from step to step and depend on the positions.
    """
    model = load_policy(str(toy_dir)).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model


def batch_of(tokenizer, prompts):
    return pad_left([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)


@torch.no_grad()
def naive_greedy(model, ids, mask, steps):
    """Greedy tokens (B, steps), re-running the full sequence each step (no KV cache)."""
    tokens = []
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False).logits[:, -1]
        top2 = logits.topk(2, dim=-1).values
        # Guard against argmax ties, where cached and uncached float rounding could legitimately disagree.
        assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-4, "near-tie in greedy logits: the reference is ill-defined"
        nxt = logits.argmax(-1)
        tokens.append(nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt[:, None])], dim=1)
    return torch.stack(tokens, dim=1)


def greedy(model, tokenizer, ids, mask, eos_token_id, max_new_tokens=MAX_NEW):
    return generate(
        model, ids, mask, eos_token_id=eos_token_id, pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=max_new_tokens, temperature=0,
    )


@pytest.fixture(scope="module")
def full_greedy(model, tokenizer):
    """generate() output for PROMPTS with no EOS, and the inputs that produced it."""
    ids, mask = batch_of(tokenizer, PROMPTS)
    return ids, mask, greedy(model, tokenizer, ids, mask, NEVER)


# --------------------------------------------------------------------------------------------------
# rlhf_lab.rollout.generate
# --------------------------------------------------------------------------------------------------


def test_prompts_are_left_padded_to_different_lengths(tokenizer):
    lengths = [len(encode_prompt(tokenizer, p)) for p in PROMPTS]
    assert len(set(lengths)) >= 3, lengths
    _, mask = batch_of(tokenizer, PROMPTS)
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()


def test_greedy_with_cache_matches_naive_full_recompute(model, tokenizer, full_greedy):
    ids, mask, gen = full_greedy
    expected = naive_greedy(model, ids, mask, MAX_NEW)
    assert gen.response_ids.shape == (len(PROMPTS), MAX_NEW)
    assert_close(gen.response_ids, expected, rtol=0, atol=0)
    assert_close(gen.response_mask, torch.ones(len(PROMPTS), MAX_NEW, dtype=gen.response_mask.dtype), rtol=0, atol=0)
    assert gen.has_eos.tolist() == [False] * len(PROMPTS)
    # The continuations are not degenerate (otherwise the comparison above would prove little).
    assert len(set(expected.flatten().tolist())) > 4


def test_each_padded_row_equals_its_prompt_decoded_alone(model, tokenizer, full_greedy):
    _, _, gen = full_greedy
    for row, prompt in enumerate(PROMPTS):
        alone = torch.tensor([encode_prompt(tokenizer, prompt)])
        expected = naive_greedy(model, alone, torch.ones_like(alone), MAX_NEW)[0]
        assert gen.response_ids[row].tolist() == expected.tolist(), f"row {row} ({prompt!r}) depends on its padding"


def test_positions_matter_for_this_model(model, tokenizer, full_greedy):
    """Sanity of the check above: positions that count the left padding change the greedy output."""
    ids, mask, gen = full_greedy
    wrong = []
    cur_ids, cur_mask = ids, mask
    with torch.no_grad():
        for _ in range(MAX_NEW):
            pos = torch.arange(cur_ids.shape[1]).expand_as(cur_ids)
            nxt = model(input_ids=cur_ids, attention_mask=cur_mask, position_ids=pos).logits[:, -1].argmax(-1)
            wrong.append(nxt)
            cur_ids = torch.cat([cur_ids, nxt[:, None]], 1)
            cur_mask = torch.cat([cur_mask, torch.ones_like(nxt[:, None])], 1)
    padded_rows = (mask[:, 0] == 0).nonzero().flatten().tolist()
    wrong = torch.stack(wrong, 1)
    assert any(wrong[r].tolist() != gen.response_ids[r].tolist() for r in padded_rows)


def test_finished_rows_are_cut_after_eos_and_padded(model, tokenizer, full_greedy):
    ids, mask, free = full_greedy
    free_tokens = free.response_ids
    eos = int(free_tokens[0, 1])  # the token row 0 produces at its second step
    assert eos != int(free_tokens[0, 0]), "precondition: row 0 must not produce the chosen EOS at step 1"
    never_rows = [r for r in range(len(PROMPTS)) if eos not in free_tokens[r].tolist()]
    assert never_rows, "precondition: some row must never produce the chosen EOS"

    gen = greedy(model, tokenizer, ids, mask, eos)
    pad = tokenizer.pad_token_id
    assert gen.response_ids.shape == (len(PROMPTS), MAX_NEW)  # other rows keep going
    # Row 0: the first token, then EOS (kept), then padding.
    assert gen.response_ids[0].tolist() == [int(free_tokens[0, 0]), eos] + [pad] * (MAX_NEW - 2)
    assert gen.response_mask[0].tolist() == [1, 1] + [0] * (MAX_NEW - 2)
    assert bool(gen.has_eos[0])
    for r in never_rows:
        assert gen.response_ids[r].tolist() == free_tokens[r].tolist()
        assert gen.response_mask[r].tolist() == [1] * MAX_NEW
        assert not bool(gen.has_eos[r])
    # Every row: the free continuation cut at its first EOS.
    for r in range(len(PROMPTS)):
        row = free_tokens[r].tolist()
        cut = row.index(eos) + 1 if eos in row else MAX_NEW
        assert gen.response_ids[r].tolist() == row[:cut] + [pad] * (MAX_NEW - cut)
        assert gen.response_mask[r].tolist() == [1] * cut + [0] * (MAX_NEW - cut)
        assert bool(gen.has_eos[r]) == (eos in row)


def test_stops_as_soon_as_every_row_has_eos(model, tokenizer):
    ids, mask = batch_of(tokenizer, [PROMPTS[2]] * 3)
    first = int(naive_greedy(model, ids, mask, 1)[0, 0])
    gen = greedy(model, tokenizer, ids, mask, first)
    assert gen.response_ids.shape == (3, 1)
    assert gen.response_ids.flatten().tolist() == [first] * 3
    assert gen.response_mask.flatten().tolist() == [1, 1, 1]
    assert gen.has_eos.tolist() == [True, True, True]


def test_in_lockstep_every_step_is_taken_and_the_response_is_the_same(model, tokenizer):
    """Sharded models gather weights with the other ranks in every forward, so a rank whose rows have all
    ended must keep stepping (``lockstep``); its responses are unchanged, only padded steps are added."""
    ids, mask = batch_of(tokenizer, [PROMPTS[2]] * 3)
    first = int(naive_greedy(model, ids, mask, 1)[0, 0])
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        free = generate(model, ids, mask, eos_token_id=first, pad_token_id=tokenizer.pad_token_id, max_new_tokens=12, temperature=0)
        early = len(calls)
        calls.clear()
        locked = generate(model, ids, mask, eos_token_id=first, pad_token_id=tokenizer.pad_token_id, max_new_tokens=12, temperature=0, lockstep=True)
    finally:
        hook.remove()
    assert early < 12 and len(calls) == 12
    assert_close(locked.response_ids, free.response_ids)
    assert locked.has_eos.tolist() == [True, True, True]


def test_stops_when_the_last_row_finishes(model, tokenizer, full_greedy):
    """Width is the step at which the last row hits EOS, not max_new_tokens."""
    ids, mask, free = full_greedy
    eos = int(free.response_ids[0, 1])
    rows = [r for r in range(len(PROMPTS)) if eos in free.response_ids[r].tolist()]
    sub_ids, sub_mask = ids[rows], mask[rows]
    last_step = max(free.response_ids[r].tolist().index(eos) for r in rows) + 1
    gen = greedy(model, tokenizer, sub_ids, sub_mask, eos)
    assert gen.response_ids.shape == (len(rows), last_step)
    assert gen.has_eos.all()


def test_seeded_sampling_is_reproducible(model, tokenizer):
    ids, mask = batch_of(tokenizer, PROMPTS * 4)  # 16 rows

    def sample(seed):
        return generate(
            model, ids, mask, eos_token_id=NEVER, pad_token_id=tokenizer.pad_token_id, max_new_tokens=MAX_NEW,
            temperature=1.0, generator=torch.Generator().manual_seed(seed),
        ).response_ids

    a, b, c = sample(123), sample(123), sample(124)
    assert a.shape == (16, MAX_NEW)
    assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    # Rows with the same prompt draw different samples (the generator advances across rows).
    assert len({tuple(a[r].tolist()) for r in range(0, 16, len(PROMPTS))}) > 1


# --------------------------------------------------------------------------------------------------
# rlhf_lab.algos.kl_control
# --------------------------------------------------------------------------------------------------


def test_fixed_kl_controller_is_constant():
    ctl = FixedKLController(0.05)
    for kl in (0.0, 3.0, 100.0):
        ctl.update(observed_kl=kl, n_steps=64)
        assert ctl.value == 0.05


def test_adaptive_kl_controller_clips_error_high():
    ctl = AdaptiveKLController(coef=0.1, target=6.0, horizon=10000)
    ctl.update(observed_kl=9.0, n_steps=64)  # 9/6 - 1 = 0.5 -> clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000), rel=1e-12)
    assert ctl.value == pytest.approx(0.100128, rel=1e-12)


def test_adaptive_kl_controller_clips_error_low():
    ctl = AdaptiveKLController(coef=0.1, target=6.0, horizon=10000)
    ctl.update(observed_kl=3.0, n_steps=64)  # 3/6 - 1 = -0.5 -> clipped to -0.2
    assert ctl.value == pytest.approx(0.099872, rel=1e-12)


def test_adaptive_kl_controller_unclipped_and_compounding():
    ctl = AdaptiveKLController(coef=0.1, target=6.0, horizon=10000)
    ctl.update(observed_kl=6.6, n_steps=100)  # error 0.1 (inside the clip range)
    assert ctl.value == pytest.approx(0.1 * 1.001, rel=1e-12)
    ctl.update(observed_kl=5.4, n_steps=500)  # error -0.1
    assert ctl.value == pytest.approx(0.1 * 1.001 * 0.995, rel=1e-12)


def test_adaptive_kl_controller_at_target_is_unchanged():
    ctl = AdaptiveKLController(coef=0.1, target=6.0, horizon=10000)
    ctl.update(observed_kl=6.0, n_steps=64)
    assert ctl.value == 0.1


def test_build_kl_controller_kinds():
    assert isinstance(build_kl_controller("fixed", 0.1, 6.0, 10000), FixedKLController)
    adaptive = build_kl_controller("adaptive", 0.2, 6.0, 10000)
    assert isinstance(adaptive, AdaptiveKLController) and adaptive.value == 0.2
    assert (adaptive.target, adaptive.horizon) == (6.0, 10000)


# --------------------------------------------------------------------------------------------------
# rlhf_lab.rewards: collation, losses, pair accuracy
# --------------------------------------------------------------------------------------------------

RANKED = [
    PreferenceRecord(prompt="tell me about the old cat .", responses=["the cat is good .", "the cat is bad .", "the cat is lovely and great ."], ranking=[2, 0, 1]),
    PreferenceRecord(prompt="describe the red river .", responses=["the river is dull .", "the river is charming ."], ranking=[1, 0]),
]


def _check_layout(batch, records, tokenizer):
    """One row per response: each response once, in order, right after its record's prompt, right-padded."""
    flat = [(r, resp) for r in records for resp in r.responses]
    assert batch["input_ids"].shape[0] == len(flat) and "prompt_len" not in batch and "segment_ids" not in batch
    assert batch["input_ids"].shape[1] == max(len(encode_prompt(tokenizer, r.prompt)) + len(encode_response(tokenizer, x)) for r, x in flat)
    for i, (record, resp) in enumerate(flat):
        expected = encode_prompt(tokenizer, record.prompt) + encode_response(tokenizer, resp)
        assert batch["input_ids"][i, : len(expected)].tolist() == expected
        assert batch["attention_mask"][i].tolist() == [1] * len(expected) + [0] * (batch["input_ids"].shape[1] - len(expected))
        assert batch["position_ids"][i, : len(expected)].tolist() == list(range(len(expected)))


def _check_group_layout(batch, records, tokenizer):
    """One row per record: the prompt once, then each response, positions restarting after the prompt;
    each response scored at its own last token."""
    width = batch["input_ids"].shape[1]
    assert batch["input_ids"].shape[0] == len(records)
    assert width == max(len(encode_prompt(tokenizer, r.prompt)) + sum(len(encode_response(tokenizer, x)) for x in r.responses) for r in records)
    cells = []
    for row, record in enumerate(records):
        prompt = encode_prompt(tokenizer, record.prompt)
        ids, segments, positions = list(prompt), [0] * len(prompt), list(range(len(prompt)))
        for k, response in enumerate(record.responses, start=1):
            response = encode_response(tokenizer, response)
            ids, segments, positions = ids + response, segments + [k] * len(response), positions + list(range(len(prompt), len(prompt) + len(response)))
            cells.append((row, len(ids) - 1))
        pad = width - len(ids)
        assert batch["input_ids"][row].tolist() == ids + [tokenizer.pad_token_id] * pad
        assert batch["segment_ids"][row].tolist() == segments + [-1] * pad
        assert batch["position_ids"][row, : len(ids)].tolist() == positions
    assert list(zip(batch["score_rows"].tolist(), batch["score_cols"].tolist())) == cells


def test_shared_prompt_mask_by_hand():
    # One row: prompt (2 tokens), response 1 (2), response 2 (1), two pads.
    mask = shared_prompt_mask(torch.tensor([[0, 0, 1, 1, 2, -1, -1]]))
    expected = [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # response 2 sees the prompt and itself, not response 1
        [1, 1, 0, 0, 0, 1, 0],  # padding: the prompt and itself (never a fully masked row) ...
        [1, 1, 0, 0, 0, 0, 1],  # ... and never other padding
    ]
    assert mask.shape == (1, 1, 7, 7) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == expected


def test_group_layout_scores_an_empty_response_where_the_prompt_ends():
    batch = collate_prompt_groups([([5, 6, 7], [[8, 9], [], [10]])], pad_id=0)
    assert batch["score_cols"].tolist() == [4, 2, 5]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 1, 1, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3]]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_reward_scores_do_not_depend_on_the_batch_layout(tokenizer, toy_dir, attention):
    """The reward model trains with each record's responses sharing one forward of the prompt (or one
    row per response) and scores rollouts in the left/right-padded layout: the same sequence must get
    the same score in all three, with either attention implementation."""
    from rlhf_lab.data import collate_pairs
    from rlhf_lab.models.loading import load_value_model

    model = load_value_model(str(toy_dir)).eval()
    model.model.config._attn_implementation = attention
    prompts = [encode_prompt(tokenizer, r.prompt) for r in RANKED for _ in r.responses]
    responses = [encode_response(tokenizer, x) for r in RANKED for x in r.responses]
    grouped = PairwiseObjective(PairwiseRewardConfig()).collate(RANKED, tokenizer)
    compact = PairwiseObjective(PairwiseRewardConfig(share_prompt=False)).collate(RANKED, tokenizer)
    shared = collate_pairs(prompts, responses, tokenizer.pad_token_id)
    with torch.no_grad():
        g = RewardObjective.batch_scores(model, grouped)
        a = RewardObjective.batch_scores(model, compact)
        b = model.sequence_scores(shared["input_ids"], shared["attention_mask"], shared["position_ids"])
    assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert_close(g, b, rtol=1e-5, atol=1e-5)
    assert a.unique().numel() == a.numel()  # the scores differ between sequences: the check has teeth


@pytest.mark.parametrize("setting,value,problem", [
    ("_attn_implementation", "flash_attention_2", "flash_attention_2 attention"),
    ("layer_types", ["sliding_attention", "full_attention"], "sliding_attention layers"),
    ("sliding_window", 16, "sliding window of 16"),
])
def test_a_model_that_cannot_take_one_mask_for_every_layer_gets_one_row_per_response(toy_dir, tokenizer, setting, value, problem, caplog):
    """Flash-attention ignores a given mask and sliding-window layers would see past their window:
    such a reward model trains on one row per response (with a warning), and a grouped batch given
    to it anyway is refused rather than scored wrongly."""
    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.models.loading import load_value_model
    from rlhf_lab.models.value_model import custom_mask_problem
    from rlhf_lab.stages.reward import shares_prompt

    model = load_value_model(str(toy_dir))
    objective = PairwiseObjective(PairwiseRewardConfig())
    assert custom_mask_problem(model.model) is None and shares_prompt(objective, model)
    setattr(model.model.config, setting, value)
    assert problem in custom_mask_problem(model.model)
    assert not shares_prompt(objective, model)
    assert "reward.share_prompt" in caplog.text and problem in caplog.text
    assert not shares_prompt(PairwiseObjective(PairwiseRewardConfig(share_prompt=False)), load_value_model(str(toy_dir)))
    with pytest.raises(RlhfLabError, match="shared prompts"):
        RewardObjective.batch_scores(model, objective.collate(RANKED, tokenizer))


@pytest.mark.parametrize("share_prompt", [True, False])
def test_pairwise_collate(tokenizer, share_prompt):
    batch = PairwiseObjective(PairwiseRewardConfig(share_prompt=share_prompt)).collate(RANKED, tokenizer)
    assert batch["pair_better"].tolist() == [2, 2, 0, 4]
    assert batch["pair_worse"].tolist() == [0, 1, 1, 3]
    assert batch["pair_better"].dtype == torch.long
    assert_close(batch["targets"], torch.zeros(5))
    (_check_group_layout if share_prompt else _check_layout)(batch, RANKED, tokenizer)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_pointwise_collate_uses_scores(tokenizer, share_prompt):
    records = [
        PreferenceRecord(prompt="tell me about the old cat .", responses=["the cat is good .", "the cat is bad .", "the cat is plain ."], scores=[0.5, -1.0, 0.5]),
        PreferenceRecord(prompt="describe the red river .", responses=["the river is dull .", "the river is charming ."], scores=[2.0, 1.0]),
    ]
    batch = PointwiseObjective(PointwiseRewardConfig(share_prompt=share_prompt)).collate(records, tokenizer)
    assert_close(batch["targets"], torch.tensor([0.5, -1.0, 0.5, 2.0, 1.0]))
    # Record 1: (0 > 1), (0 == 2: no pair), (2 > 1); record 2: (3 > 4).
    assert batch["pair_better"].tolist() == [0, 2, 3]
    assert batch["pair_worse"].tolist() == [1, 1, 4]
    (_check_group_layout if share_prompt else _check_layout)(batch, records, tokenizer)


def test_pairwise_loss_is_mean_negative_logsigmoid():
    batch = {"pair_better": torch.tensor([2, 2, 0, 4]), "pair_worse": torch.tensor([0, 1, 1, 3])}
    scores = torch.tensor([0.5, -1.0, 2.0, 1.5, 0.0], dtype=torch.float64)
    diffs = [2.0 - 0.5, 2.0 - (-1.0), 0.5 - (-1.0), 0.0 - 1.5]
    expected = -sum(math.log(1.0 / (1.0 + math.exp(-d))) for d in diffs) / 4
    loss = PairwiseObjective(PairwiseRewardConfig()).loss(scores, batch)
    assert_close(loss, torch.tensor(expected, dtype=torch.float64))


def test_pointwise_loss_is_mse():
    scores = torch.tensor([1.0, 2.0, 0.0])
    loss = PointwiseObjective(PointwiseRewardConfig()).loss(scores, {"targets": torch.tensor([0.0, 2.0, 3.0])})
    assert_close(loss, torch.tensor((1.0 + 0.0 + 9.0) / 3))


def test_pair_accuracy_counts_ties_as_wrong():
    batch = {"pair_better": torch.tensor([2, 2, 0, 4]), "pair_worse": torch.tensor([0, 1, 1, 3])}
    scores = torch.tensor([1.0, 1.0, 2.0, 0.5, 0.0])
    # (2,0) right, (2,1) right, (0,1) tie -> wrong, (4,3) wrong.
    assert PairwiseObjective.pair_accuracy(scores, batch) == (2, 4)


# --------------------------------------------------------------------------------------------------
# rlhf_lab.algos.ppo.CyclingSampler
# --------------------------------------------------------------------------------------------------


def test_cycling_sampler_passes():
    sampler = CyclingSampler(size=5, num_samples=12, seed=0)
    assert len(sampler) == 12
    order = list(sampler)
    assert len(order) == 12
    assert sorted(order[:5]) == [0, 1, 2, 3, 4]
    assert sorted(order[5:10]) == [0, 1, 2, 3, 4]
    assert len(set(order[10:])) == 2 and set(order[10:]) <= set(range(5))
    assert list(sampler) == order  # iterating again restarts from the seed
    assert list(CyclingSampler(size=5, num_samples=12, seed=0)) == order
    assert list(CyclingSampler(size=5, num_samples=12, seed=1)) != order


def test_minibatch_rows_cut_shared_padding_and_keep_the_maths(model, tokenizer):
    """Experience.rows drops the columns every chosen row pads (long prompts and long responses of
    other rows), and the policy's response logits of those rows are unchanged."""
    from rlhf_lab.data import collate_pairs, response_logits
    from rlhf_lab.rollout import Experience

    prompts = [encode_prompt(tokenizer, p) for p in ("what ?", "tell me about the famous old river over there .", "hi .", "describe the cat .")]
    responses = [encode_response(tokenizer, r) for r in ("the cat is good .", "fine .", "the cat is lovely and great and pleasant and good .", "ok .")]
    batch = collate_pairs(prompts, responses, tokenizer.pad_token_id)
    p, width = batch["prompt_len"], batch["input_ids"].shape[1] - batch["prompt_len"]
    response_mask = batch["attention_mask"][:, p:].float()
    zeros = torch.zeros_like(response_mask)
    exp = Experience(batch, response_mask, zeros, zeros, torch.zeros(4), torch.ones(4, dtype=torch.bool), torch.arange(4))
    idx = torch.tensor([3, 0])  # neither the longest prompt (row 1) nor the longest response (row 2)
    rows, kept = exp.rows(idx)
    own_prompt, own_response = max(len(prompts[0]), len(prompts[3])), max(len(responses[0]), len(responses[3]))
    assert own_prompt < p and own_response < width  # there is padding to cut
    assert rows["prompt_len"] == own_prompt and kept == own_response
    assert rows["input_ids"].shape == (2, own_prompt + own_response)
    with torch.no_grad():
        full = response_logits(model, {k: (v[idx] if torch.is_tensor(v) else v) for k, v in batch.items()})
        cut = response_logits(model, rows)
    mask = response_mask[idx, :kept].bool()
    assert_close(cut[mask], full[:, :kept][mask], rtol=1e-5, atol=1e-5)
    assert (response_mask[idx, kept:] == 0).all()  # nothing cut that a row needed


# --------------------------------------------------------------------------------------------------
# rlhf_lab.rollout.sample_responses and the policy handles built on it
# --------------------------------------------------------------------------------------------------


def expected_greedy(model, tokenizer, prompt):
    """The greedy response of one prompt alone, cut after the first EOS (kept), from the naive decoder."""
    ids, mask = batch_of(tokenizer, [prompt])
    tokens = naive_greedy(model, ids, mask, MAX_NEW)[0].tolist()
    eos = tokenizer.eos_token_id
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_sample_responses_groups_k_samples_per_prompt_in_prompt_order(model, tokenizer, batch_size):
    """Greedy samples: each prompt's group holds k copies of that prompt's own greedy response, however
    the flat batch is chunked (catches wrong chunk slicing, regrouping, or lost EOS cuts)."""
    from rlhf_lab.config import SamplingConfig

    sampling = SamplingConfig(temperature=0, max_new_tokens=MAX_NEW, batch_size=batch_size)
    grouped = sample_responses(model, tokenizer, PROMPTS, sampling, samples_per_prompt=2, seed=0)
    assert len(grouped) == len(PROMPTS)
    for prompt, group in zip(PROMPTS, grouped):
        assert group == [expected_greedy(model, tokenizer, prompt)] * 2


def test_sample_responses_is_seeded_and_restores_the_training_mode(model, tokenizer):
    from rlhf_lab.config import SamplingConfig

    sampling = SamplingConfig(temperature=1.0, max_new_tokens=MAX_NEW, batch_size=4)
    model.train()
    try:
        first = sample_responses(model, tokenizer, PROMPTS[:2], sampling, samples_per_prompt=3, seed=5)
        assert model.training, "the caller's training mode must come back"
        again = sample_responses(model, tokenizer, PROMPTS[:2], sampling, samples_per_prompt=3, seed=5)
        other = sample_responses(model, tokenizer, PROMPTS[:2], sampling, samples_per_prompt=3, seed=6)
    finally:
        model.eval()
    assert first == again
    assert first != other
    assert [len(g) for g in first] == [3, 3]
    assert all(1 <= len(r) <= MAX_NEW for g in first for r in g)
    # Dropout off while sampling: the same seed gives the same samples whether the model was training or not.
    assert sample_responses(model, tokenizer, PROMPTS[:2], sampling, samples_per_prompt=3, seed=5) == first


def test_best_of_n_factory_wraps_the_reference_with_the_configured_n(model, tokenizer):
    from rlhf_lab.algos.best_of_n import best_of_n
    from rlhf_lab.algos.best_of_n_config import BestOfNConfig
    from rlhf_lab.algos.inputs import AlgoInputs
    from rlhf_lab.config import SamplingConfig

    reward = object()
    cfg = BestOfNConfig(n=5, kl_samples=7, sampling=SamplingConfig(temperature=0.7))
    handle = best_of_n(cfg, AlgoInputs(sft=None, reference=model, tokenizer=tokenizer, prompts=[], seed=0, reward=reward))
    assert (handle.n, handle.kl_samples, handle.sampling, handle.reward_fn) == (5, 7, cfg.sampling, reward)
    assert handle.base.model is model and handle.base.tokenizer is tokenizer


@pytest.mark.parametrize("module_path", ["rlhf_lab.algos.on_policy:OnPolicyModule", "rlhf_lab.algos.dpo:DPOModule"])
def test_policy_handle_is_the_trained_policy(model, tokenizer, module_path):
    import importlib

    import lightning.pytorch as pl

    module_name, cls_name = module_path.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    module = cls.__new__(cls)
    pl.LightningModule.__init__(module)
    module.policy, module.tokenizer = model, tokenizer
    handle = module.policy_handle()
    assert handle.model is model and handle.tokenizer is tokenizer


@pytest.mark.parametrize("filtering", [{"top_k": 1}, {"top_p": 1e-6}])
def test_sample_responses_applies_top_k_and_top_p(model, tokenizer, filtering):
    """Keeping one token (top-k 1, or a vanishing nucleus) at temperature 1 is greedy decoding."""
    from rlhf_lab.config import SamplingConfig

    sampling = SamplingConfig(temperature=1.0, max_new_tokens=MAX_NEW, batch_size=4, **filtering)
    grouped = sample_responses(model, tokenizer, PROMPTS, sampling, samples_per_prompt=2, seed=3)
    assert grouped == [[expected_greedy(model, tokenizer, p)] * 2 for p in PROMPTS]
