"""Composition inside the on-policy algorithms: each piece of an update checked against a direct,
hand-unrolled computation from forward passes made here, at temperature != 1 and with an entropy bonus.

Kinds of bug these tests exist for: dropping the temperature from the update or the reference,
shifting the value slice by one token, regressing the critic on advantages instead of returns,
disabling value clipping, flipping the entropy sign, taking the old log-probs from the reference,
whitening in one place and using raw advantages in another, a baseline that includes the sample
itself. The models are a tiny untrained GPT-2 written by the toy task; the same directory serves as
policy, reference and reward model (a fresh scalar head is put on it, seeded).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from rlhf_lab.algos.a2c import A2CModule
from rlhf_lab.algos.a2c_config import A2CConfig
from rlhf_lab.algos.inputs import AlgoInputs
from rlhf_lab.algos.policy_gradient import PolicyGradientModule
from rlhf_lab.algos.policy_gradient_config import GRPOConfig, ReinforceConfig, RLOOConfig
from rlhf_lab.algos.ppo import PPOModule
from rlhf_lab.algos.ppo_config import PPOConfig
from rlhf_lab.config import SamplingConfig
from rlhf_lab.data import encode_prompt, pad_left
from rlhf_lab.models.loading import load_policy, load_tokenizer, load_value_model
from rlhf_lab.models.value_model import RewardNormaliser
from rlhf_lab.ops.advantages import gae
from rlhf_lab.ops.masked import masked_whiten
from rlhf_lab.rewards.function import LearnedReward
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

BATCH = 8
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    task = make_toy_task(ToyTaskConfig(num_sft_examples=200), seed=0)
    model_dir = tmp_path_factory.mktemp("toy_model")
    task.build_base_model(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    prompt_ids, prompt_mask = pad_left([encode_prompt(tokenizer, p) for p in task.train_prompts[:BATCH]], tokenizer.pad_token_id)
    assert len(set(prompt_mask.sum(1).tolist())) > 1  # left padding is exercised
    return task, model_dir, tokenizer, prompt_ids, prompt_mask


def make_inputs(toy, normaliser=RewardNormaliser(mean=0.3, std=2.0)) -> AlgoInputs:
    task, model_dir, tokenizer, _, _ = toy
    torch.manual_seed(0)  # the reward model's scalar head is freshly initialised at load time
    reward = LearnedReward(load_value_model(str(model_dir)), normaliser)
    reference = load_policy(str(model_dir)).eval().requires_grad_(False)
    return AlgoInputs(sft=model_dir, reference=reference, tokenizer=tokenizer, prompts=task.train_prompts, seed=0, reward=reward)


def make(toy, module_cls, cfg_cls, **overrides):
    sampling = overrides.pop("sampling", SamplingConfig(max_new_tokens=6, temperature=TEMPERATURE))
    fields = {"total_episodes": 16, "rollout_batch_size": BATCH, "sampling": sampling, **overrides}
    module = module_cls(cfg_cls(**fields), make_inputs(toy))
    module.generator = torch.Generator().manual_seed(0)  # on_fit_start is not called
    boost_eos(module, 4.0)
    return module


def boost_eos(module, bias: float):
    """Add ``bias`` to the policy's EOS logit (not the reference's): responses end at varying lengths,
    and policy != reference so the KL penalty is non-zero."""
    eos = module.tokenizer.eos_token_id

    def hook(_mod, _inp, out):
        out = out.clone()
        out[..., eos] += bias
        return out

    return module.policy.lm_head.register_forward_hook(hook)


def rollout(module, toy):
    _, _, _, prompt_ids, prompt_mask = toy
    exp = module.rollout(prompt_ids, prompt_mask)
    lengths = exp.response_mask.sum(1)
    assert len(set(lengths.tolist())) > 1 and bool(exp.has_eos.any())  # right padding of different lengths
    return exp


def direct_logits(model, exp, temperature=TEMPERATURE):
    """Logits predicting each response token, from one plain forward over the whole sequence."""
    p = exp.batch["prompt_len"]
    out = model(input_ids=exp.batch["input_ids"], attention_mask=exp.batch["attention_mask"], position_ids=exp.batch["position_ids"])
    return out.logits[:, p - 1 : -1] / temperature


def direct_logprobs(model, exp, temperature=TEMPERATURE):
    logp = torch.log_softmax(direct_logits(model, exp, temperature).float(), -1)
    return logp.gather(-1, exp.response_ids.unsqueeze(-1)).squeeze(-1) * exp.response_mask


def direct_values(critic, exp):
    """V(s_t) for response token t: the critic's output at the position just before that token."""
    p, mask = exp.batch["prompt_len"], exp.response_mask
    full = critic(exp.batch["input_ids"], exp.batch["attention_mask"], exp.batch["position_ids"])
    out = torch.zeros_like(mask)
    for row in range(mask.shape[0]):
        for t in range(int(mask[row].sum())):
            out[row, t] = full[row, p - 1 + t]
    return out


def masked_avg(x, mask):
    return (x * mask).sum() / mask.sum()


# --- the shared rollout engine -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppo_case(toy):
    module = make(toy, PPOModule, PPOConfig, minibatch_size=4, ent_coef=0.05, kl_coef=0.3)
    return module, rollout(module, toy)


def test_rollout_logprobs_are_the_policy_and_reference_at_the_sampling_temperature(ppo_case):
    module, exp = ppo_case
    with torch.no_grad():
        policy, reference = direct_logprobs(module.policy, exp), direct_logprobs(module.frozen.reference, exp)
        policy_t1 = direct_logprobs(module.policy, exp, temperature=1.0)
    # the sampler's own log-probs equal a full forward (they are reused as PPO's old log-probs) ...
    assert_close(exp.logprobs, policy, atol=1e-5, rtol=1e-5)
    assert_close(exp.ref_logprobs, reference, atol=1e-5, rtol=1e-5)
    # ... and a temperature dropped anywhere, or the reference's log-probs used as the policy's, shows
    assert (exp.logprobs - policy_t1).abs().max() > 1e-2
    assert (exp.logprobs - exp.ref_logprobs).abs().max() > 1e-2


def test_rollout_values_align_with_a_direct_critic_forward(ppo_case):
    module, exp = ppo_case
    with torch.no_grad():
        expected = direct_values(module.critic, exp)
        shifted = torch.roll(expected, 1, dims=1)
    assert_close(exp.values, expected, atol=1e-5, rtol=1e-5)
    assert (exp.values - shifted).abs().max() > 1e-3


def test_critic_from_the_reward_model_starts_on_the_normalised_scale(ppo_case):
    module, exp = ppo_case
    reward = module.frozen.reward
    with torch.no_grad():
        raw = reward.model(exp.batch["input_ids"], exp.batch["attention_mask"], exp.batch["position_ids"])
        critic = module.critic(exp.batch["input_ids"], exp.batch["attention_mask"], exp.batch["position_ids"])
    # the critic's head is the reward model's with the normaliser (mean 0.3, std 2.0) folded in
    assert_close(critic, (raw - 0.3) / 2.0, atol=1e-5, rtol=1e-5)
    # and the scores the returns are built on are normalised the same way
    assert_close(exp.scores[exp.has_eos], reward.normaliser(reward.model.sequence_scores(
        exp.batch["input_ids"], exp.batch["attention_mask"], exp.batch["position_ids"]))[exp.has_eos])


# --- PPO ---------------------------------------------------------------------------------------------


def test_ppo_advantages_are_whitened_gae_of_kl_penalised_rewards(ppo_case):
    module, exp = ppo_case
    rewards, advantages, returns = module.advantages(exp)
    mask = exp.response_mask
    log_ratio = (exp.logprobs - exp.ref_logprobs) * mask
    last = mask.sum(1).long() - 1
    expected_rewards = -0.3 * log_ratio
    expected_rewards[torch.arange(BATCH), last] += exp.scores
    assert_close(rewards, expected_rewards)
    raw_adv, raw_ret = gae(expected_rewards, exp.values, mask, 1.0, 0.95)
    assert_close(advantages, masked_whiten(raw_adv, mask))
    assert_close(returns, raw_ret)  # returns are raw advantages + values, never whitened
    valid = mask.bool()
    assert abs(float(advantages[valid].mean())) < 1e-5 and abs(float(advantages[valid].std()) - 1) < 1e-3


def test_ppo_first_minibatch_is_on_policy_and_each_loss_term_matches_a_hand_unrolled_one(ppo_case):
    module, exp = ppo_case
    cfg = module.cfg
    _, advantages, returns = module.advantages(exp)
    # Move the rollout's values away from the current critic so value clipping is active on some tokens.
    exp = copy.copy(exp)
    exp.values = (exp.values + torch.linspace(-0.5, 0.5, exp.values.shape[1])) * exp.response_mask
    idx = torch.tensor([6, 2, 7, 4])
    out = module.minibatch_loss(exp, advantages, returns, idx)

    mask = exp.response_mask[idx]
    sub = copy.copy(exp)
    sub.batch = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in exp.batch.items()}
    sub.response_mask = mask
    with torch.no_grad():
        logits = direct_logits(module.policy, sub)
        logp_all = torch.log_softmax(logits.float(), -1)
        logp = logp_all.gather(-1, sub.response_ids.unsqueeze(-1)).squeeze(-1)
        values = direct_values(module.critic, sub)
    # policy unchanged since the rollout: ratio 1, so no clipping and a k3 KL of 0
    assert float(out["losses/clipfrac"]) == 0.0
    assert abs(float(out["losses/approx_kl"])) < 1e-6
    adv = advantages[idx]
    assert_close(out["losses/policy_loss"], -masked_avg(adv * torch.exp(logp - exp.logprobs[idx]), mask), atol=1e-5, rtol=1e-5)
    # value loss: regressed on the returns, clipped around the rollout's values
    old, ret = exp.values[idx], returns[idx]
    clipped = old + (values - old).clamp(-cfg.value_clip_range, cfg.value_clip_range)
    expected_vf = 0.5 * masked_avg(torch.maximum((values - ret) ** 2, (clipped - ret) ** 2), mask)
    unclipped_vf = 0.5 * masked_avg((values - ret) ** 2, mask)
    assert abs(float(expected_vf - unclipped_vf)) > 1e-4  # clipping really changes the figure here
    assert_close(out["losses/value_loss"], expected_vf, atol=1e-5, rtol=1e-5)
    assert float(out["losses/value_clipfrac"]) > 0
    # entropy of the temperature-scaled distribution, as a bonus (subtracted from the loss)
    entropy = masked_avg(-(logp_all.exp() * logp_all).sum(-1), mask)
    assert_close(out["losses/entropy"], entropy, atol=1e-5, rtol=1e-5)
    assert_close(out["loss"].detach(), out["losses/policy_loss"] + cfg.vf_coef * expected_vf - cfg.ent_coef * entropy, atol=1e-5, rtol=1e-5)
    assert out["loss"].requires_grad


def test_training_leaves_reference_and_reward_model_bit_identical(toy, tmp_path):
    import lightning.pytorch as pl

    module = make(toy, PPOModule, PPOConfig, minibatch_size=4, ent_coef=0.05)
    frozen = [copy.deepcopy(m.state_dict()) for m in (module.frozen.reference, module.frozen.reward.model)]
    policy_before = copy.deepcopy(module.policy.state_dict())
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module)
    for before, model in zip(frozen, (module.frozen.reference, module.frozen.reward.model)):
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(policy_before[k], v) for k, v in module.policy.state_dict().items())


# --- A2C ---------------------------------------------------------------------------------------------


def capture_loss(module):
    """Replace the optimiser step by a recorder: the test checks the loss that would be stepped on."""
    losses = []

    def record(loss):
        losses.append(loss)
        return torch.zeros(())

    module.optimise = record
    return losses


@pytest.mark.parametrize("returns", ["gae", "nstep"])
def test_a2c_update_is_one_hand_unrolled_step(toy, returns):
    module = make(toy, A2CModule, A2CConfig, ent_coef=0.05, kl_coef=0.2, returns=returns, n_steps=2)
    exp = rollout(module, toy)
    assert exp.values is None  # A2C takes the values from its update's single critic forward
    with torch.no_grad():
        values_old = direct_values(module.critic, exp)
    losses = capture_loss(module)
    module.iteration(exp)
    assert len(losses) == 1  # one update per rollout
    assert_close(exp.values, values_old, atol=1e-5, rtol=1e-5)

    mask = exp.response_mask
    log_ratio = (exp.logprobs - exp.ref_logprobs) * mask
    rewards = -0.2 * log_ratio
    rewards[torch.arange(BATCH), mask.sum(1).long() - 1] += exp.scores
    # Returns by hand: GAE(1, 0.95), or two-step returns bootstrapped from the critic.
    ret = torch.zeros_like(rewards)
    for row in range(BATCH):
        n = int(mask[row].sum())
        if returns == "gae":
            last = 0.0
            for t in reversed(range(n)):
                next_v = float(values_old[row, t + 1]) if t + 1 < n else 0.0
                last = float(rewards[row, t]) + next_v - float(values_old[row, t]) + 0.95 * last
                ret[row, t] = last + values_old[row, t]
        else:
            for t in range(n):
                boot = float(values_old[row, t + 2]) if t + 2 < n else 0.0
                ret[row, t] = sum(float(rewards[row, t + i]) for i in range(2) if t + i < n) + boot
    adv = masked_whiten((ret - values_old) * mask, mask)

    logits = direct_logits(module.policy, exp)
    logp_all = torch.log_softmax(logits.float(), -1)
    logp = logp_all.gather(-1, exp.response_ids.unsqueeze(-1)).squeeze(-1)
    values = direct_values(module.critic, exp)
    entropy = masked_avg(-(logp_all.exp() * logp_all).sum(-1), mask)
    expected = -masked_avg(adv * logp, mask) + 0.5 * 0.5 * masked_avg((values - ret) ** 2, mask) - 0.05 * entropy
    assert_close(losses[0], expected, atol=1e-5, rtol=1e-5)
    # the gradient is the hand-unrolled one too (no ratio, no clipping, nothing detached by mistake)
    params = [p for p in module.policy.parameters()][:3] + [next(module.critic.parameters())]
    got = torch.autograd.grad(losses[0], params, retain_graph=True)
    want = torch.autograd.grad(expected, params)
    for g, w in zip(got, want):
        assert_close(g, w, atol=1e-5, rtol=1e-4)


# --- critic-free policy gradients --------------------------------------------------------------------


def leave_one_out(values, k):
    out = []
    for i, v in enumerate(values):
        group = i // k
        others = [values[j] for j in range(group * k, group * k + k) if j != i]
        out.append(v - sum(others) / len(others))
    return torch.tensor(out)


def test_rloo_loss_is_minus_the_leave_one_out_advantage_of_the_kl_penalised_reward(toy):
    module = make(toy, PolicyGradientModule, RLOOConfig, rollout_batch_size=4, kl_coef=0.2)
    _, _, _, prompt_ids, prompt_mask = toy
    exp = module.rollout(prompt_ids[:4], prompt_mask[:4])
    assert exp.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert torch.equal(exp.batch["input_ids"][0, : exp.batch["prompt_len"]], exp.batch["input_ids"][3, : exp.batch["prompt_len"]])
    losses = capture_loss(module)
    stats = module.iteration(exp)
    mask = exp.response_mask
    seq_rewards = (exp.scores - 0.2 * ((exp.logprobs - exp.ref_logprobs) * mask).sum(1)).tolist()
    adv = leave_one_out(seq_rewards, 4)
    logp = direct_logprobs(module.policy, exp)
    # one pass, one minibatch: ratio 1, the surrogate is -A * ratio and its gradient that of -A * log pi
    expected = -masked_avg(adv[:, None] * torch.exp(logp - exp.logprobs), mask)
    assert_close(losses[0], expected, atol=1e-5, rtol=1e-5)
    assert float(stats["losses/clipfrac"]) == 0.0
    param = next(module.policy.parameters())
    assert_close(torch.autograd.grad(losses[0], param, retain_graph=True)[0],
                 torch.autograd.grad(-masked_avg(adv[:, None] * logp, mask), param)[0], atol=1e-6, rtol=1e-4)


def test_grpo_uses_group_whitened_scores_and_a_k3_kl_loss(toy):
    module = make(toy, PolicyGradientModule, GRPOConfig, rollout_batch_size=4, kl_coef=0.2)
    _, _, _, prompt_ids, prompt_mask = toy
    exp = module.rollout(prompt_ids[:4], prompt_mask[:4])
    losses = capture_loss(module)
    module.iteration(exp)
    mask = exp.response_mask
    groups = exp.scores.view(4, 4)
    adv = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).flatten()
    logp = direct_logprobs(module.policy, exp)
    log_r = exp.ref_logprobs - logp
    k3 = torch.exp(log_r) - 1 - log_r
    expected = -masked_avg(adv[:, None] * torch.exp(logp - exp.logprobs), mask) + 0.2 * masked_avg(k3, mask)
    assert_close(losses[0], expected, atol=1e-5, rtol=1e-5)


def test_reinforce_baseline_is_a_moving_average_of_past_batches(toy):
    module = make(toy, PolicyGradientModule, ReinforceConfig, kl_coef=0.0, baseline_decay=0.5)
    first = torch.tensor([1.0, 3.0])
    second = torch.tensor([5.0, 7.0])
    # first batch: no past, so its own mean (2); then 0.5 * 2 + 0.5 * 2 = 2 is the baseline for the second
    assert_close(module.advantages(first), torch.tensor([-1.0, 1.0]))
    assert_close(module.advantages(second), torch.tensor([3.0, 5.0]))
    assert module.baseline == pytest.approx(0.5 * 2.0 + 0.5 * 6.0)


def test_on_policy_configs_reject_filtered_sampling():
    for cfg_cls in (PPOConfig, A2CConfig, RLOOConfig):
        with pytest.raises(ValueError, match="top_k=0, top_p=1.0"):
            cfg_cls(sampling=SamplingConfig(top_p=0.9))
        with pytest.raises(ValueError, match="top_k"):
            cfg_cls(sampling=SamplingConfig(top_k=5))


def test_a_rule_reward_gives_a_critic_started_from_the_policy(toy):
    from rlhf_lab.algos.on_policy import build_critic
    from rlhf_lab.rewards.function import RuleReward

    inputs = make_inputs(toy)
    inputs.reward = RuleReward(lambda prompt, response: float(len(response)), inputs.tokenizer)
    critic = build_critic(inputs, "reward")
    policy = load_policy(str(inputs.sft))
    assert torch.equal(critic.model.transformer.wte.weight, policy.transformer.wte.weight)


def test_the_critic_trains_only_the_head_it_uses(ppo_case):
    module, _ = ppo_case
    trainable = {id(p) for p in module.trainable_parameters()}
    assert id(module.critic.head.weight) in trainable and id(module.critic.head.bias) in trainable
    # the reward model's original head is replaced by the folded one: training it would be dead
    # weight, and under DDP an unused trainable parameter stalls the gradient reduction
    assert id(module.critic.model.score.weight) not in trainable
    assert all(not p.requires_grad for p in module.frozen.reward.model.parameters())


def test_grpo_kl_loss_stays_finite_when_the_pad_token_is_very_unlikely(toy):
    module = make(toy, PolicyGradientModule, GRPOConfig, rollout_batch_size=4, kl_coef=0.2)
    pad = module.tokenizer.pad_token_id

    def bury_pad(_mod, _inp, out):
        out = out.clone()
        out[..., pad] -= 1000.0  # log-prob of the pad token far below exp's float range
        return out

    module.policy.lm_head.register_forward_hook(bury_pad)
    _, _, _, prompt_ids, prompt_mask = toy
    exp = module.rollout(prompt_ids[:4], prompt_mask[:4])
    assert (exp.response_mask == 0).any()  # there is padding for k3 to see
    losses = capture_loss(module)
    module.iteration(exp)
    assert torch.isfinite(losses[0])


@pytest.mark.parametrize("cfg_cls", [PPOConfig, A2CConfig])
@pytest.mark.parametrize("field,value,message", [
    ("gamma", 1.5, "algo.gamma and algo.lam"), ("vf_coef", -0.1, "algo.vf_coef"),
    ("critic_lr", 0.0, "algo.critic_lr"), ("critic_init", "value", "algo.critic_init"),
])
def test_actor_critic_configs_share_their_checks(cfg_cls, field, value, message):
    with pytest.raises(ValueError, match=message):
        cfg_cls(**{field: value})


@pytest.mark.parametrize("grouped", [True, False])
def test_a_rollouts_prompts_are_of_similar_length_unless_told_otherwise(toy, grouped):
    """algo.group_by_length reaches the prompt sampler: grouped rollouts carry little left padding."""
    module = make(toy, PolicyGradientModule, GRPOConfig, rollout_batch_size=4, total_episodes=64, group_by_length=grouped)
    widths = []
    for batch in module.train_dataloader():
        lengths = batch["prompt_mask"].sum(1)
        widths.append(int(lengths.max() - lengths.min()))
    spread = sum(widths) / len(widths)
    assert (spread <= 1.0) is grouped, spread
