"""Composition inside PPO's training step (rlhf_lab/algos/ppo.py).

PPOModule.rollout builds the per-token rewards (KL penalty + score on the last token), runs GAE and
whitens the advantages; PPOModule.minibatch_loss must then use exactly those whitened advantages.
The models are a tiny untrained GPT-2 written by the toy task; the same directory serves as policy,
reference and reward model (load_value_model puts a fresh scalar head on it).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.algos.context import AlgoContext
from rlhf_lab.algos.ppo import PPOConfig, PPOModule
from rlhf_lab.config import SamplingConfig
from rlhf_lab.data import encode_prompt, pad_left
from rlhf_lab.models.loading import load_tokenizer
from rlhf_lab.models.value_model import RewardNormaliser
from rlhf_lab.ops.advantages import gae
from rlhf_lab.ops.masked import masked_mean, masked_whiten
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

BATCH = 8


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    task = make_toy_task(ToyTaskConfig(num_sft_examples=200), seed=0)
    model_dir = tmp_path_factory.mktemp("toy_model")
    task.build_base_model(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    prompt_ids, prompt_mask = pad_left([encode_prompt(tokenizer, p) for p in task.train_prompts[:BATCH]], tokenizer.pad_token_id)
    # prompts of different lengths, so the left padding is exercised
    assert len(set(prompt_mask.sum(1).tolist())) > 1
    return task, model_dir, tokenizer, prompt_ids, prompt_mask


def make_module(toy, **overrides) -> PPOModule:
    task, model_dir, tokenizer, _, _ = toy
    sampling = overrides.pop("sampling", SamplingConfig(max_new_tokens=6))
    cfg = PPOConfig(total_episodes=8, rollout_batch_size=8, minibatch_size=4, sampling=sampling, **overrides)
    context = AlgoContext(
        policy_path=model_dir, reward_path=model_dir, normaliser=RewardNormaliser(),
        tokenizer=tokenizer, train_prompts=task.train_prompts, seed=0,
    )
    torch.manual_seed(0)  # the scalar heads are freshly initialised at load time
    return PPOModule(cfg, context)


def boost_eos(module: PPOModule, bias: float):
    """Add ``bias`` to the policy's EOS logit (not the reference's): responses end at varying lengths,
    and policy != reference so the KL penalty is non-zero."""
    eos = module.tokenizer.eos_token_id

    def hook(_mod, _inp, out):
        out = out.clone()
        out[..., eos] += bias
        return out

    return module.policy.lm_head.register_forward_hook(hook)


def rollout(module: PPOModule, toy, seed: int = 0):
    _, _, _, prompt_ids, prompt_mask = toy
    module.generator = torch.Generator().manual_seed(seed)  # on_fit_start is not called
    return module.rollout(prompt_ids, prompt_mask)


@pytest.fixture(scope="module")
def whitened_case(toy):
    module = make_module(toy)  # whiten_advantages=True by default
    assert module.cfg.whiten_advantages
    boost_eos(module, 4.0)
    ro = rollout(module, toy)
    lengths = ro.response_mask.sum(1)
    # the case is only informative with right padding of different lengths
    assert len(set(lengths.tolist())) > 1 and bool(ro.has_eos.any())
    raw_adv, raw_ret = gae(ro.rewards, ro.values, ro.response_mask, module.cfg.gamma, module.cfg.lam)
    return module, ro, raw_adv, raw_ret


def test_rollout_advantages_are_whitened(whitened_case):
    module, ro, raw_adv, raw_ret = whitened_case
    mask = ro.response_mask
    valid = mask.bool()
    adv = ro.advantages
    # mean 0, std 1 over the valid response tokens; 0 on padding
    assert_close(adv[valid].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    assert_close(adv[valid].std(), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert (adv[~valid] == 0).all()
    # the raw GAE output is neither centred nor unit-scaled, and differs from what the rollout holds
    assert abs(raw_adv[valid].mean().item()) > 1e-2 or abs(raw_adv[valid].std().item() - 1) > 1e-2
    assert not torch.allclose(adv, raw_adv, atol=1e-3)
    # ... but the rollout's advantages are exactly the whitened raw GAE output
    assert_close(adv, masked_whiten(raw_adv, mask))
    # returns are not whitened: raw advantages + values on valid tokens, 0 on padding
    assert_close(ro.returns, raw_ret)
    assert_close(ro.returns[valid], (raw_adv + ro.values)[valid])
    assert (ro.returns[~valid] == 0).all()
    assert (ro.values[~valid] == 0).all()


@pytest.mark.parametrize("idx", [[0, 1, 2, 3], [6, 2, 7, 4]])
def test_minibatch_policy_loss_uses_whitened_advantages(whitened_case, idx):
    module, ro, raw_adv, _ = whitened_case
    idx = torch.tensor(idx)
    mask = ro.response_mask[idx]
    out = module.minibatch_loss(ro, idx)
    # first update: the policy is the one that sampled, so ratio = 1 and loss = -mean(A)
    with_whitened = -masked_mean(ro.advantages[idx], mask)
    with_raw = -masked_mean(raw_adv[idx], mask)
    assert abs(with_whitened.item() - with_raw.item()) > 1e-2  # the check below can tell them apart
    assert_close(out["losses/policy_loss"], with_whitened, atol=1e-5, rtol=1e-5)
    assert not torch.isclose(out["losses/policy_loss"], with_raw, atol=1e-3)
    assert_close(out["losses/clipfrac"], torch.tensor(0.0))
    assert_close(out["losses/approx_kl"], torch.tensor(0.0), atol=1e-6, rtol=0)
    # the total loss combines policy, value and entropy terms with the configured weights
    cfg = module.cfg
    expected_total = out["losses/policy_loss"] + cfg.vf_coef * out["losses/value_loss"] - cfg.ent_coef * out["losses/entropy"]
    assert_close(out["loss"].detach(), expected_total)
    assert out["loss"].requires_grad


def test_without_whitening_rollout_holds_raw_gae(toy):
    module = make_module(toy, whiten_advantages=False)
    boost_eos(module, 4.0)
    ro = rollout(module, toy)
    raw_adv, _ = gae(ro.rewards, ro.values, ro.response_mask, module.cfg.gamma, module.cfg.lam)
    assert_close(ro.advantages, raw_adv)
    idx = torch.tensor([1, 3, 5, 7])
    out = module.minibatch_loss(ro, idx)
    assert_close(out["losses/policy_loss"], -masked_mean(raw_adv[idx], ro.response_mask[idx]), atol=1e-5, rtol=1e-5)


def test_rewards_policy_equals_reference(toy):
    module = make_module(toy)
    ro = rollout(module, toy)
    mask = ro.response_mask
    # same weights for policy and reference: the per-token KL is 0 ...
    assert_close(ro.logprobs, ro.ref_logprobs)
    # ... so the rewards sum to the score, all of it on the last valid token
    assert_close(ro.rewards.sum(1), ro.scores)
    last = mask.sum(1).long() - 1
    rows = torch.arange(BATCH)
    assert_close(ro.rewards[rows, last], ro.scores)
    others = torch.ones_like(mask, dtype=torch.bool)
    others[rows, last] = False
    assert (ro.rewards[others] == 0).all()


def test_rewards_kl_penalty_and_score_on_last_token(toy):
    kl_coef = 0.3
    module = make_module(toy, kl_coef=kl_coef)
    boost_eos(module, 4.0)
    ro = rollout(module, toy)
    mask = ro.response_mask
    log_ratio = (ro.logprobs - ro.ref_logprobs) * mask
    assert log_ratio.abs().sum() > 0.1  # the boosted policy really differs from the reference
    # sum over tokens of the rewards = score - kl_coef * sum(logprobs - ref_logprobs)
    assert_close(ro.rewards.sum(1), ro.scores - kl_coef * log_ratio.sum(1))
    # token by token: -kl_coef * log_ratio everywhere, plus the score on the last valid token
    last = mask.sum(1).long() - 1
    assert len(set(last.tolist())) > 1
    expected = -kl_coef * log_ratio
    expected[torch.arange(BATCH), last] += ro.scores
    assert_close(ro.rewards, expected)
    assert (ro.rewards[~mask.bool()] == 0).all()


def test_missing_eos_penalty_lowers_score_of_rows_without_eos(toy):
    penalty = 1.5
    # max_new_tokens=2 and a mild EOS boost: most rows have no EOS, a few do
    module = make_module(toy, missing_eos_penalty=penalty, sampling=SamplingConfig(max_new_tokens=2))
    boost_eos(module, 3.0)
    cfg_with = module.cfg
    with_penalty = rollout(module, toy, seed=0)
    module.cfg = dataclasses.replace(cfg_with, missing_eos_penalty=None)
    without = rollout(module, toy, seed=0)
    module.cfg = cfg_with

    # same seed, same samples
    assert torch.equal(with_penalty.batch["input_ids"], without.batch["input_ids"])
    assert torch.equal(with_penalty.has_eos, without.has_eos)
    has_eos = with_penalty.has_eos
    assert int((~has_eos).sum()) >= BATCH // 2 and bool(has_eos.any())  # both branches are exercised
    # rows without EOS lose exactly the penalty, rows with EOS are untouched
    assert_close(with_penalty.scores[~has_eos], without.scores[~has_eos] - penalty)
    assert_close(with_penalty.scores[has_eos], without.scores[has_eos])
    # and the penalty reaches the rewards (on the last token) but not the KL part
    assert_close(with_penalty.rewards.sum(1) - without.rewards.sum(1), -penalty * (~has_eos).float())
