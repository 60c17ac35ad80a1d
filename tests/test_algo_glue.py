"""Hand-computed checks of the algorithm modules' glue: optimiser steps, minibatch averaging, the
statistics an iteration logs, the adaptive KL update, and the DPO diagnostics.

The modules are built bare (``cls.__new__`` plus LightningModule's own ``__init__``) with only the
attributes the method under test reads; model forwards are replaced by fixed tensors. No model is
loaded, so every test runs in milliseconds. Each test's docstring names the kind of bug it catches.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.testing import assert_close

import rlhf_lab.algos.dpo as dpo_mod
import rlhf_lab.algos.policy_gradient as pg_mod
import rlhf_lab.algos.ppo as ppo_mod
from rlhf_lab.algos.dpo import DPOModule
from rlhf_lab.algos.dpo_config import DPOConfig
from rlhf_lab.algos.kl_control import build_kl_controller
from rlhf_lab.algos.on_policy import OnPolicyModule
from rlhf_lab.algos.policy_gradient import PolicyGradientModule
from rlhf_lab.algos.policy_gradient_config import GRPOConfig, RLOOConfig
from rlhf_lab.algos.ppo import PPOModule
from rlhf_lab.algos.ppo_config import PPOConfig
from rlhf_lab.errors import NonFiniteLossError
from rlhf_lab.rollout import Experience


def bare(cls, **attrs):
    """An instance of ``cls`` without its ``__init__`` (which loads models): only ``attrs`` are set."""
    module = cls.__new__(cls)
    pl.LightningModule.__init__(module)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


# --- OnPolicyModule.optimise -------------------------------------------------------------------------


class RecordingOptimiser:
    def __init__(self):
        self.steps = 0

    def zero_grad(self):
        pass

    def step(self):
        self.steps += 1


def optimiser_case(tmp_path, max_grad_norm=0.5):
    policy = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        policy.weight.copy_(torch.tensor([[1.0, 2.0]]))
    opt = RecordingOptimiser()
    module = bare(OnPolicyModule, cfg=SimpleNamespace(max_grad_norm=max_grad_norm), inputs=SimpleNamespace(checkpoint_dir=tmp_path))
    module.policy, module.critic = policy, None
    module.optimizers = lambda: opt
    module.manual_backward = lambda loss: loss.backward()
    return module, policy, opt


def test_optimise_steps_on_a_finite_loss_and_returns_the_unclipped_norm(tmp_path):
    """Catches the finiteness check inverted (a finite step then raises) or the step skipped: loss
    w . (3, 4) has gradient (3, 4), norm 5, returned before clipping to 0.5 (gradient (0.3, 0.4))."""
    module, policy, opt = optimiser_case(tmp_path)
    norm = module.optimise((policy.weight * torch.tensor([[3.0, 4.0]])).sum())
    assert float(norm) == pytest.approx(5.0)
    assert_close(policy.weight.grad, torch.tensor([[0.3, 0.4]]))
    assert opt.steps == 1


def test_optimise_refuses_a_non_finite_loss_and_names_it(tmp_path):
    """Catches a non-finite loss stepped on, checked through the gradient norm instead, or reported as the
    wrong quantity / stage / step / place. The loss w . (3, 4) + inf is infinite while its gradient
    (3, 4) is finite; the message must name the loss, stage 'policy', step 0 and the checkpoint directory."""
    module, policy, opt = optimiser_case(tmp_path)
    loss = (policy.weight * torch.tensor([[3.0, 4.0]])).sum() + float("inf")
    with pytest.raises(NonFiniteLossError) as err:
        module.optimise(loss)
    assert str(err.value) == f"stage 'policy', step 0: loss is inf; no checkpoint was written yet in {tmp_path}"
    assert opt.steps == 0


def test_optimise_refuses_an_infinite_gradient_behind_a_finite_loss(tmp_path):
    """Catches the check looking at the loss only: sqrt(w_0 - 1) at w_0 = 1 is 0, a finite loss, but
    its gradient 1 / (2 sqrt(0)) is infinite; the error must name the gradient norm, and no step."""
    module, policy, opt = optimiser_case(tmp_path)
    loss = torch.sqrt(policy.weight[0, 0] - 1.0)
    with pytest.raises(NonFiniteLossError) as err:
        module.optimise(loss)
    assert str(err.value) == f"stage 'policy', step 0: gradient norm is inf; no checkpoint was written yet in {tmp_path}"
    assert opt.steps == 0


# --- OnPolicyModule.minibatch_updates ----------------------------------------------------------------


def test_minibatch_updates_cover_each_epoch_once_and_average_every_step():
    """Catches minibatch starts stepping by 1 or stopping at minibatch_size, the step count starting at
    1 or not growing by exactly 1, sums that subtract or forget earlier steps, a product instead of the
    mean, the row order not drawn from the module's generator, and a renamed grad-norm key.

    5 rows, minibatches of 2, 2 epochs: sizes 2, 2, 1 per epoch, so 6 steps; the mean minibatch size is
    10 / 6 and the (stubbed) gradient norms 0..5 average to 2.5."""
    steps = []

    def optimise(loss):
        steps.append(float(loss))
        return torch.tensor(float(len(steps) - 1))

    module = bare(OnPolicyModule, generator=torch.Generator().manual_seed(7))
    module.optimise = optimise
    seen = []

    def loss_fn(idx):
        seen.append(idx.tolist())
        return {"loss": torch.tensor(10.0 + len(seen)), "rows": torch.tensor(float(len(idx)))}

    torch.manual_seed(123)  # the global stream differs from the module's seeded one
    out = module.minibatch_updates(5, 2, 2, loss_fn)
    expected_gen = torch.Generator().manual_seed(7)
    first, second = torch.randperm(5, generator=expected_gen).tolist(), torch.randperm(5, generator=expected_gen).tolist()
    assert seen == [first[0:2], first[2:4], first[4:5], second[0:2], second[2:4], second[4:5]]
    assert steps == [11.0, 12.0, 13.0, 14.0, 15.0, 16.0]  # each minibatch's own loss is stepped on
    assert set(out) == {"rows", "losses/grad_norm"}
    assert float(out["rows"]) == pytest.approx(10 / 6)
    assert float(out["losses/grad_norm"]) == pytest.approx(2.5)


def test_minibatch_size_is_global_each_of_two_ranks_steps_on_its_half():
    """Catches a rank taking the whole global minibatch (half the optimiser steps of one process, each on
    twice the rows): 4 rows on this rank, global minibatches of 4 over 2 ranks: 2 steps of 2 rows."""
    module = bare(OnPolicyModule, generator=torch.Generator().manual_seed(7))
    module._trainer = SimpleNamespace(world_size=2)
    module.optimise = lambda loss: torch.tensor(0.0)
    seen = []
    module.minibatch_updates(4, 1, 4, lambda idx: seen.append(len(idx)) or {"loss": torch.tensor(1.0)})
    assert seen == [2, 2]


# --- OnPolicyModule.training_step --------------------------------------------------------------------


def fake_experience():
    """Two responses of lengths 2 and 1 (of 3 positions); log-ratios 0.5, -1 and 1.5 on the valid tokens."""
    return SimpleNamespace(
        scores=torch.tensor([1.0, 2.0]),
        logprobs=torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]]),
        ref_logprobs=torch.tensor([[-1.5, -1.0, 0.0], [-2.0, 0.0, 0.0]]),
        response_mask=torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
        has_eos=torch.tensor([True, False]),
        values=torch.tensor([[0.5, 0.25, 0.0], [-0.5, 0.0, 0.0]]),
        reward_details={"reward_mean": torch.tensor([2.0, 3.0]), "reward_spread": torch.tensor([0.5, 1.5])},
    )


def test_training_step_logs_the_rollout_statistics():
    """Catches the rollout KL summed over the whole batch, taken as logp + ref_logp or divided by the
    mask, a wrong response length or EOS rate, and logging with the wrong batch size or flags.

    Sequence KLs: 0.5 - 1 = -0.5 and 1.5, mean 0.5; lengths 2 and 1, mean 1.5; EOS rate 1/2; proxy
    reward (1 + 2) / 2 = 1.5; an ensemble's mean and spread averaged over rows (2.5, 1.0); batch size 2
    (rows, not the 3 positions)."""
    exp = fake_experience()
    module = bare(OnPolicyModule)
    module.rollout = lambda ids, mask: exp
    module.iteration = lambda e: {"losses/extra": torch.tensor(0.25)}
    logged = []
    module.log_dict = lambda values, **kw: logged.append(("dict", dict(values), kw))
    module.log = lambda name, value, **kw: logged.append((name, value, kw))
    module.training_step({"prompt_ids": None, "prompt_mask": None}, 0)
    (kind, values, kw), (name, reward, reward_kw) = logged
    assert kind == "dict" and kw == {"batch_size": 2}
    assert values == pytest.approx({"losses/extra": 0.25, "rollout/proxy_reward": 1.5, "rollout/kl": 0.5,
                                    "rollout/response_length": 1.5, "rollout/eos_rate": 0.5,
                                    "rollout/reward_mean": 2.5, "rollout/reward_spread": 1.0})
    assert (name, reward) == ("reward", pytest.approx(1.5))
    assert reward_kw == {"prog_bar": True, "logger": False, "batch_size": 2}


def test_training_step_logs_only_on_the_rollouts_the_trainer_writes():
    """With log_every_n_steps = 3 the figures of rollouts 3 and 6 are logged, and every rollout still
    trains (catches logging skipped for good, or on the wrong rollouts)."""
    from types import SimpleNamespace

    exp = fake_experience()
    module = bare(OnPolicyModule)
    module.rollout = lambda ids, mask: exp
    iterations, logged = [], []
    module.iteration = lambda e: iterations.append(1) or {}
    module.log_dict = lambda values, **kw: logged.append(len(iterations))
    module.log = lambda name, value, **kw: None
    module._trainer = SimpleNamespace(log_every_n_steps=3, world_size=1)
    for step in range(7):
        module.training_step({"prompt_ids": None, "prompt_mask": None}, step)
    assert len(iterations) == 7 and logged == [3, 6]


# --- PPO ---------------------------------------------------------------------------------------------


def ppo_module(**overrides):
    fields = {"total_episodes": 4, "rollout_batch_size": 2, "minibatch_size": 1, "kl_coef": 0.2, "whiten_advantages": False, **overrides}
    cfg = PPOConfig(**fields)
    module = bare(PPOModule, cfg=cfg, kl_ctl=build_kl_controller(cfg.kl_controller, cfg.kl_coef, cfg.target_kl, cfg.kl_horizon))
    calls = []
    module.minibatch_updates = lambda size, epochs, mb, fn: calls.append((size, epochs, mb)) or {}
    return module, calls


def test_ppo_iteration_statistics_and_adaptive_kl_update():
    """Catches the minibatch pass sized by positions instead of rows, the non-score reward (the KL
    penalty) summed over the whole batch or with the score added, the KL coefficient logged after its
    update, and the adaptive controller not updated, updated on a wrong KL, or counting 2 prompts as 4.

    Sequence KLs -0.5 and 1.5 (mean 0.5), kl_coef 0.2: non-score rewards 0.1 and -0.3, mean -0.1. With
    target_kl 0.4 and horizon 10: error clip(0.5 / 0.4 - 1) = 0.2 ... exactly the bound, so
    coef = 0.2 * (1 + 0.2 * 2 / 10) = 0.208."""
    module, calls = ppo_module(kl_controller="adaptive", target_kl=0.4, kl_horizon=10, ppo_epochs=3)
    exp = fake_experience()
    stats = module.iteration(exp)
    assert calls == [(2, 3, 1)]
    assert float(stats["rollout/non_score_reward"]) == pytest.approx(-0.1)
    assert float(stats["rollout/kl_coef"]) == pytest.approx(0.2)
    assert module.kl_ctl.value == pytest.approx(0.208)


def test_ppo_adaptive_kl_update_inside_the_clip():
    """Catches a wrong KL or step count inside the clipped range: mean sequence KL 0.5 against target 0.5
    / 1.1 gives error 0.1 and coef 0.2 * (1 + 0.1 * 2 / 10) = 0.204."""
    module, _ = ppo_module(kl_controller="adaptive", target_kl=0.5 / 1.1, kl_horizon=10)
    module.iteration(fake_experience())
    assert module.kl_ctl.value == pytest.approx(0.204)


def test_ppo_iteration_logs_the_critics_explained_variance():
    """Catches the explained variance logged under another name or computed against the wrong target.
    Returns are GAE(1, 0.95) of the KL-penalised rewards plus the values: row 0 has rewards
    (-0.1, 0.2 + 1) (the score 1 on its last token) and values (0.5, 0.25), so A_1 = 1.2 - 0.25 = 0.95,
    A_0 = -0.1 + 0.25 - 0.5 + 0.95 * 0.95 = 0.5525 and returns (1.0525, 1.2); row 1 has reward
    2 - 0.3 = 1.7 and value -0.5, return 1.7. Residuals: (0.5525, 0.95, 2.2)."""
    module, _ = ppo_module()
    exp = fake_experience()
    stats = module.iteration(exp)
    target, residual = torch.tensor([1.0525, 1.2, 1.7]), torch.tensor([0.5525, 0.95, 2.2])
    expected = 1 - residual.var(unbiased=False) / target.var(unbiased=False)
    assert float(stats["losses/explained_variance"]) == pytest.approx(float(expected), rel=1e-5)


def ppo_minibatch_case(ent_coef, logits):
    """PPO's minibatch loss with the policy and critic forwards replaced by fixed tensors."""
    module, _ = ppo_module(ent_coef=ent_coef, minibatch_size=2)
    module.policy = None  # its forward is replaced by ``logits``
    module.critic = lambda ids, mask, pos: torch.tensor([[0.0, 0.1, 0.2, 0.3], [0.0, -0.1, -0.2, -0.3]])
    exp = experience(logprobs=torch.full((2, 3), -1.0), ref_logprobs=torch.zeros(2, 3), values=torch.zeros(2, 3))
    return module, exp


def experience(**per_token) -> Experience:
    """Two rows: a one-token prompt, then responses of 3 and 2 tokens (the second padded)."""
    response_mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    attention_mask = torch.cat([torch.ones(2, 1), response_mask], dim=1).long()
    batch = {"prompt_len": 1, "input_ids": torch.tensor([[5, 0, 1, 2], [5, 2, 2, 0]]), "attention_mask": attention_mask,
             "position_ids": torch.arange(4).expand(2, 4)}
    return Experience(batch, response_mask, scores=torch.zeros(2), has_eos=torch.ones(2, dtype=torch.bool), group_ids=torch.zeros(2, dtype=torch.long), **per_token)


def test_ppo_entropy_bonus_reaches_the_gradient(monkeypatch):
    """Catches the entropy computed without a graph whenever 0 < ent_coef <= 1: the gradient of PPO's
    loss with ent_coef 0.05 must differ from the one with ent_coef 0 by -0.05 times the gradient of the
    mean token entropy."""
    logits = torch.tensor([[[0.2, -0.1, 0.4], [0.0, 0.3, -0.2], [0.1, 0.1, 0.5]],
                           [[-0.3, 0.2, 0.0], [0.4, -0.4, 0.1], [0.0, 0.0, 0.0]]], requires_grad=True)
    # The prompt is one token: position j predicts response token j; only unmasked positions are asked for.
    monkeypatch.setattr("rlhf_lab.models.logits.logits_at", lambda model, inputs, rows, cols: logits[rows, cols])
    grads = {}
    for coef in (0.0, 0.05):
        module, exp = ppo_minibatch_case(coef, logits)
        out = module.minibatch_loss(exp, torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]))
        grads[coef] = torch.autograd.grad(out["loss"], logits)[0]
    mask = exp.response_mask
    logp = torch.log_softmax(logits, -1)
    entropy = ((-(logp.exp() * logp).sum(-1)) * mask).sum() / mask.sum()
    assert_close(grads[0.05] - grads[0.0], -0.05 * torch.autograd.grad(entropy, logits)[0])


# --- critic-free policy gradients --------------------------------------------------------------------


def test_dr_grpo_advantages_are_not_divided_by_the_group_std():
    """Catches ``scale_by_std`` not passed on (so Dr. GRPO silently becomes GRPO): scores 1, 2, 3, 6 in
    one group of 4 give advantages (-2, -1, 0, 3) with the mean subtracted only."""
    cfg = GRPOConfig(total_episodes=4, rollout_batch_size=1, samples_per_prompt=4, minibatch_size=4, scale_by_std=False)
    module = bare(PolicyGradientModule, cfg=cfg, baseline=None)
    assert_close(module.advantages(torch.tensor([1.0, 2.0, 3.0, 6.0])), torch.tensor([-2.0, -1.0, 0.0, 3.0]))


def test_policy_gradient_iteration_logs_the_kl_penalised_sequence_reward():
    """Catches the sequence reward statistic dropped or renamed, or the update sized wrongly: scores 1 and
    2 minus 0.2 times the sequence KLs (-0.5, 1.5) give 1.1 and 1.7, mean 1.4; 2 rows in minibatches of
    min(8, 2) = 2."""
    cfg = RLOOConfig(total_episodes=4, rollout_batch_size=1, samples_per_prompt=2, minibatch_size=2, kl_coef=0.2, update_epochs=1)
    module = bare(PolicyGradientModule, cfg=cfg, baseline=None)
    calls = []
    module.minibatch_updates = lambda size, epochs, mb, fn: calls.append((size, epochs, mb)) or {}
    stats = module.iteration(fake_experience())
    assert calls == [(2, 1, 2)]
    assert float(stats["rollout/sequence_reward"]) == pytest.approx(1.4)
    # Two ranks, each with these 2 rows, minibatches of up to 4: the global minibatch is min(4, 2 x 2) = 4
    # (each rank then takes 2), not min(4, 2) = 2.
    module = bare(PolicyGradientModule, cfg=RLOOConfig(**{**vars(cfg), "minibatch_size": 4}), baseline=None)
    module._trainer = SimpleNamespace(world_size=2)
    module.minibatch_updates = lambda size, epochs, mb, fn: calls.append((size, epochs, mb)) or {}
    module.iteration(fake_experience())
    assert calls[-1] == (2, 1, 4)


def test_grpo_minibatch_loss_reports_its_terms(monkeypatch):
    """Catches the policy-gradient diagnostics logged under wrong names, or the k3 KL loss term missing
    from them. Policy log-probs equal the old ones (ratio 1: clipfrac 0, approx KL 0), so the surrogate
    is -mean(A) = -(1 * 3 + (-1) * 2) / 5 = -0.2; with the policy's log-probs -1 and the reference's
    -1.5 on every valid token, k3 = e^(-0.5) - 1 + 0.5."""
    logits = torch.zeros(2, 3, 4)  # uniform over 4 tokens: every log-prob is log(1/4)
    monkeypatch.setattr("rlhf_lab.models.logits.logits_at", lambda model, inputs, rows, cols: logits[rows, cols])
    cfg = GRPOConfig(total_episodes=4, rollout_batch_size=1, samples_per_prompt=2, minibatch_size=2, kl_coef=0.1)
    module = bare(PolicyGradientModule, cfg=cfg, baseline=None, policy=None)
    logp = math.log(0.25)
    exp = experience(logprobs=torch.full((2, 3), logp), ref_logprobs=torch.full((2, 3), logp - 0.5))
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
    out = module.minibatch_loss(exp, advantages, torch.tensor([0, 1]))
    k3 = math.exp(-0.5) - 1 + 0.5
    assert set(out) == {"loss", "losses/policy_loss", "losses/approx_kl", "losses/clipfrac", "losses/kl_loss"}
    assert float(out["losses/policy_loss"]) == pytest.approx(-0.2)
    assert float(out["losses/clipfrac"]) == 0.0 and abs(float(out["losses/approx_kl"])) < 1e-7
    assert float(out["losses/kl_loss"]) == pytest.approx(k3, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(-0.2 + 0.1 * k3, rel=1e-5)


# --- DPO ---------------------------------------------------------------------------------------------


def dpo_case(monkeypatch, policy_logps, ref, tmp_path=None):
    """A bare DPO module whose policy forward returns ``policy_logps`` (chosen rows then rejected rows)."""
    monkeypatch.setattr(dpo_mod, "sequence_logps", lambda model, batch: (policy_logps, torch.tensor([2, 3, 1, 4])))
    module = bare(DPOModule, cfg=DPOConfig(beta=0.5), inputs=SimpleNamespace(checkpoint_dir=tmp_path))
    module.policy = nn.Linear(1, 1)
    module.ref_logps = {"train": ref, "heldout": ref}
    return module


def test_dpo_diagnostics_count_a_tied_pair_as_wrong(monkeypatch):
    """Catches ties counted as correct in the reward accuracy (``>=``) and the log-prob diagnostics
    renamed. Pair 0: implicit rewards 0.5 * (-1 + 2) = 0.5 and 0.5 * (-3 + 3) = 0 (right); pair 1: both
    0.5 * (-2 + 2) = 0 (a tie, wrong): accuracy 1/2."""
    ref = torch.tensor([[-2.0, -3.0, 2.0, 1.0], [-2.0, -2.0, 3.0, 4.0]])
    module = dpo_case(monkeypatch, torch.tensor([-1.0, -2.0, -3.0, -2.0]), ref)
    loss, stats = module.pair_loss({"index": torch.tensor([0, 1])}, "train")
    assert float(stats["rewards/accuracies"]) == 0.5
    assert float(stats["rewards/margins"]) == pytest.approx(0.25)
    assert float(stats["logps/chosen"]) == pytest.approx(-1.5)
    assert float(stats["logps/rejected"]) == pytest.approx(-2.5)
    expected = (-math.log(1 / (1 + math.exp(-0.5))) + math.log(2)) / 2
    assert float(loss) == pytest.approx(expected)


def test_dpo_steps_log_per_pair_batch_sizes_and_refuse_a_nan_loss(monkeypatch, tmp_path):
    """Catches the DPO loss logged under another name, without the progress bar or with a batch size
    other than the number of pairs, and a non-finite loss reported without the stage, step or place."""
    ref = torch.tensor([[-2.0, -3.0, 2.0, 1.0], [-2.0, -2.0, 3.0, 4.0]])
    module = dpo_case(monkeypatch, torch.tensor([-1.0, -2.0, -3.0, -2.0]), ref, tmp_path)
    logged = []
    module.log = lambda name, value, **kw: logged.append((name, kw))
    module.log_dict = lambda values, **kw: logged.append((sorted(values)[0], kw))
    batch = {"index": torch.tensor([0, 1])}
    module.training_step(batch, 0)
    module.validation_step(batch, 0)
    assert logged == [
        ("losses/dpo", {"prog_bar": True, "batch_size": 2, "sync_dist": True}), ("logps/chosen", {"batch_size": 2, "sync_dist": True}),
        ("val/losses/dpo", {"batch_size": 2}), ("val/logps/chosen", {"batch_size": 2}),
    ]
    nan_module = dpo_case(monkeypatch, torch.tensor([float("nan"), -2.0, -3.0, -2.0]), ref, tmp_path)
    with pytest.raises(NonFiniteLossError) as err:
        nan_module.training_step(batch, 0)
    assert str(err.value) == f"stage 'policy', step 0: loss is nan; no checkpoint was written yet in {tmp_path}"
