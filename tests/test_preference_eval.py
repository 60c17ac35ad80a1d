"""Held-out preference figures and the AI judge in evaluation (rlhf_lab/stages/preference_eval.py,
rlhf_lab/stages/evaluate.py): implicit rewards against hand-computed log-ratios, pairs without signal left
out, the judge asked about each policy's own response against SFT's, and the checks of ``eval.judge``."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch

from rlhf_lab.config import EvalConfig, SamplingConfig
from rlhf_lab.models.loading import load_policy, load_tokenizer
from rlhf_lab.policy import ModelPolicy
from rlhf_lab.records import PreferenceRecord
from rlhf_lab.stages.evaluate import evaluate_policies
from rlhf_lab.stages.preference_eval import HeldOutPreferences, Yardsticks, implicit_rewards
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task


class LogProbs:
    """A policy whose log-probability of each response (by its first token id) is given."""

    def __init__(self, logps: dict) -> None:
        self.logps = logps

    def sequence_logprobs(self, prompts, responses):
        return torch.tensor([self.logps[r[0]] for r in responses], dtype=torch.float64)


RECORDS = [
    # Three responses ranked 1 > 0 > 2.
    PreferenceRecord("p", ["a", "b", "c"], ranking=[1, 0, 2], response_ids=[[10], [11], [12]]),
    # Two identical responses: no preference, left out (as DPO's training leaves them out).
    PreferenceRecord("q", ["d", "d"], ranking=[0, 1], response_ids=[[13], [13]]),
    # Scores: 14 better than 15.
    PreferenceRecord("r", ["e", "f"], scores=[2.0, 1.0], response_ids=[[14], [15]]),
]


def test_implicit_reward_figures_against_hand_computed_log_ratios():
    heldout = HeldOutPreferences.of(RECORDS, tokenizer=None)
    assert heldout.sizes == [3, 2] and heldout.pair_count == 4
    policy = LogProbs({10: -1.0, 11: -2.0, 12: -3.0, 14: -1.0, 15: -1.5})
    reference = LogProbs({10: -2.0, 11: -2.5, 12: -2.0, 14: -1.5, 15: -1.0})
    rewards = implicit_rewards(policy, reference, heldout)
    # Log-ratios: 10: +1.0, 11: +0.5, 12: -1.0 | 14: +0.5, 15: -0.5.
    assert rewards == pytest.approx([1.0, 0.5, -1.0, 0.5, -0.5])
    metrics = {}
    per_record = heldout.figures(metrics, "dpo", rewards)
    # Record p, pairs (1,0): 0.5-1.0 = -0.5 wrong, (1,2): +1.5 right, (0,2): +2.0 right -> 2/3, margin 1.0.
    # Record r, pair (0,1): +1.0 right -> 1, margin 1.0.
    assert per_record == pytest.approx([2 / 3, 1.0])
    assert metrics["eval/dpo/pref_accuracy"] == pytest.approx(5 / 6)
    assert metrics["eval/dpo/pref_accuracy_se"] == pytest.approx((1 / 3) / 2 ** 0.5 / 2 ** 0.5)  # std(ddof=1) of (2/3, 1) is 0.2357
    assert metrics["eval/dpo/pref_margin"] == pytest.approx(1.0) and metrics["eval/dpo/pref_margin_se"] == pytest.approx(0.0)


def test_score_preferences_pairs_each_policy_with_its_anchor_and_compares_with_sft():
    heldout = HeldOutPreferences.of(RECORDS, tokenizer=None)
    sft, base = LogProbs({10: -2.0, 11: -2.5, 12: -2.0, 14: -1.5, 15: -1.0}), LogProbs({10: -2.0, 11: -2.0, 12: -2.0, 14: -1.0, 15: -1.0})
    dpo = LogProbs({10: -1.0, 11: -2.0, 12: -3.0, 14: -1.0, 15: -1.5})
    metrics = {}
    Yardsticks(heldout, {"dpo": sft, "sft": base}).score_preferences(metrics, {"sft": sft, "dpo": dpo}, None, None, "cpu")
    # sft against base: 10: 0, 11: -0.5, 12: 0 | 14: -0.5, 15: 0. Record p: (1,0) wrong, (1,2) wrong, (0,2) tie -> 1/6; r: wrong -> 0.
    assert metrics["eval/sft/pref_accuracy"] == pytest.approx(1 / 12)
    assert metrics["eval/dpo/pref_accuracy_diff"] == pytest.approx((2 / 3 - 1 / 6 + 1 - 0) / 2)
    assert metrics["eval/heldout_preference_records"] == 2 and metrics["eval/heldout_preference_pairs"] == 4
    assert "eval/reward_model/pref_accuracy" not in metrics
    # A policy without a distribution of its own (best-of-n) and one without an anchor get no figures.
    metrics = {}
    Yardsticks(heldout, {"dpo": sft}).score_preferences(metrics, {"sft": sft, "dpo": object()}, None, None, "cpu")
    assert not any(key.endswith("pref_accuracy") for key in metrics)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("toy_model")
    task = make_toy_task(ToyTaskConfig(num_sft_examples=200), seed=0)
    task.build_base_model(model_dir)
    return task, load_policy(str(model_dir)), load_tokenizer(str(model_dir))


class LengthJudge:
    """Prefers the longer of the two responses, strongly, and says A a little more often than B."""

    def __init__(self) -> None:
        self.triples = []

    def __call__(self, triples):
        self.triples.extend(triples)
        better = [0.9 if len(first) > len(second) else 0.1 if len(first) < len(second) else 0.5 for _, first, second in triples]
        return better, [0.55] * len(triples)


def test_the_judge_compares_each_policys_own_response_with_sfts_on_the_same_prompt(toy):
    task, model, tokenizer = toy
    task = dataclasses.replace(task, eval_prompts=task.eval_prompts[:6])
    sft = ModelPolicy(model, tokenizer)
    torch.manual_seed(1)
    other = load_policy(str(model.name_or_path)).eval()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    judge = LengthJudge()
    cfg = EvalConfig(samples_per_prompt=2, sampling=SamplingConfig(max_new_tokens=12))
    metrics, samples = evaluate_policies({"sft": sft, "noisy": ModelPolicy(other, tokenizer)}, sft, None, tokenizer, task, cfg, seed=0,
                                         yardsticks=Yardsticks(judge=judge))
    assert [(p, a, b) for p, a, b in judge.triples] == [(s["prompt"], s["noisy_response"], s["sft_response"]) for s in samples]
    longer = [len(s["noisy_response"]) > len(s["sft_response"]) for s in samples]
    ties = [len(s["noisy_response"]) == len(s["sft_response"]) for s in samples]
    assert metrics["eval/noisy/judge_win_rate"] == pytest.approx((sum(longer) + 0.5 * sum(ties)) / len(samples))
    assert metrics["eval/noisy/judge_win_rate_low"] <= metrics["eval/noisy/judge_win_rate"] <= metrics["eval/noisy/judge_win_rate_high"]
    assert metrics["eval/noisy/judge_position_bias"] == pytest.approx(0.05)
    assert "eval/noisy/judge_lc_win_rate" in metrics and "eval/sft/judge_win_rate" not in metrics


def test_eval_judge_is_checked_before_any_work(tmp_path, refused):
    code, err = refused(["eval.judge=feedback", f"hydra.run.dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"])
    assert code == 2 and "eval.judge=feedback" in err and "feedback=ai_judge" in err
    code, err = refused([f"eval.judge={tmp_path / 'no_such_judge'}", f"hydra.run.dir={tmp_path / 'r2'}", f"cache_dir={tmp_path / 'c'}"])
    assert code == 2 and "eval.judge" in err and "does not exist" in err
    code, err = refused(["eval.judge=no_such_module_here:make", f"hydra.run.dir={tmp_path / 'r3'}", f"cache_dir={tmp_path / 'c'}"])
    assert code == 2 and "eval.judge 'no_such_module_here:make': cannot import it" in err
    module = types.ModuleType("judge_that_raises_for_tests")
    module.make = lambda cfg: (_ for _ in ()).throw(RuntimeError("no key"))
    sys.modules["judge_that_raises_for_tests"] = module
    code, err = refused(["eval.judge=judge_that_raises_for_tests:make", f"hydra.run.dir={tmp_path / 'r4'}", f"cache_dir={tmp_path / 'c'}"])
    assert code == 2 and "eval.judge 'judge_that_raises_for_tests:make': its factory raised RuntimeError: no key" in err
