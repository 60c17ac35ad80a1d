"""Tiny end-to-end runs of the real CLI on the toy task, asserting real outcomes."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from conftest import SUBPROCESS_TIMEOUT, TINY, TINY_FEEDBACK, TINY_ONLINE, TINY_UPSTREAM, read_metrics, run_cli

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)

EVAL_FIGURES = ("gold_reward", "proxy_reward", "kl", "response_length", "perplexity")


def test_tiny_pipeline_writes_metrics_models_and_checkpoints(tmp_path, tiny_run_args):
    result = run_cli(tiny_run_args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    metrics = read_metrics(run_dir)
    for policy in ("sft", "ppo"):
        for figure in EVAL_FIGURES:
            assert math.isfinite(metrics[f"eval/{policy}/{figure}"]), (policy, figure)
    # The SFT policy is the reference: its KL to itself is exactly 0, the PPO policy's is not.
    assert metrics["eval/sft/kl"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["eval/ppo/kl"] != pytest.approx(0.0, abs=1e-6)
    # 57 held-out prompts x 4 candidates: every ranking gives 4-choose-2 = 6 pairs.
    assert metrics["feedback/heldout_records"] == 57 and metrics["feedback/heldout_pairs"] == 57 * 6
    assert metrics["feedback/train_pairs"] == 6 * metrics["feedback/train_records"]
    # Each stage's wall time, under its own name.
    for stage in ("base", "sft", "preferences", "reward_model", "policy", "evaluate", "total"):
        assert metrics[f"time/{stage}_seconds"] >= 0, stage
    assert metrics["time/total_seconds"] >= metrics["time/policy_seconds"] > 0
    # The summary table prints the same figures as metrics.json.
    assert f"{metrics['eval/ppo/gold_reward']:.3f}" in result.stdout
    assert "win rate by gold [95%]" in result.stdout and "reward-model pref. accuracy" in result.stdout

    # The final policy and the reward model load with plain transformers.
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(run_dir / "policy")
    AutoTokenizer.from_pretrained(run_dir / "policy")
    reward_dirs = list((tmp_path / "cache" / "reward_model").iterdir())
    assert len(reward_dirs) == 1
    AutoModelForSequenceClassification.from_pretrained(reward_dirs[0])
    normaliser = json.loads((reward_dirs[0] / "reward_normaliser.json").read_text())
    assert normaliser["std"] > 0
    # The logger got the evaluation figures too.
    policy_header = (run_dir / "csv" / "policy" / "metrics.csv").read_text().splitlines()[0]
    assert "losses/approx_kl" in policy_header and "rollout/kl_coef" in policy_header
    eval_header = (run_dir / "csv" / "eval" / "metrics.csv").read_text().splitlines()[0]
    assert "eval/ppo/win_rate" in eval_header and "eval/sft/gold_reward" in eval_header
    # Checkpoints live in the run directory; samples are kept for inspection.
    for stage in ("sft", "reward_model", "policy"):
        assert (run_dir / "checkpoints" / stage / "last.ckpt").is_file(), stage
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").open()]
    assert len(samples) == 57  # held-out prompts x eval.samples_per_prompt
    gold = sum(s["ppo_gold"] for s in samples) / len(samples)
    assert gold == pytest.approx(metrics["eval/ppo/gold_reward"])


def test_pointwise_reward_runs(tmp_path, tiny_run_args):
    result = run_cli([*tiny_run_args, "reward=pointwise"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    # Ratings give a pair for every two candidates with different scores (ties are skipped).
    assert 0 < metrics["feedback/heldout_pairs"] <= 57 * 6
    records = [json.loads(line) for line in next((tmp_path / "cache" / "preferences").iterdir()).joinpath("train.jsonl").open()]
    assert records[0]["scores"] is not None and records[0]["ranking"] is None


def test_multirun_reuses_upstream_stages_and_shares_a_wandb_group(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "algo.lr=1e-5,3e-5", *TINY, f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", "logger=wandb", "logger.mode=offline"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # One table for the sweep, a row per job labelled by its overrides; no per-job tables.
    assert result.stdout.count("# Sweep comparison") == 1 and "held-out evaluation: sft vs" not in result.stdout
    assert re.search(r"^\| 0 \| algo.lr=1e-05 \| ppo \|", result.stdout, re.M) and re.search(r"^\| 1 \| algo.lr=3e-05 \| ppo \|", result.stdout, re.M)
    assert "job 0 (algo.lr=1e-05 " in result.stdout
    first, second = (sweep / "0" / "rlhf_lab.log").read_text(), (sweep / "1" / "rlhf_lab.log").read_text()
    for stage in ("sft", "preferences", "reward_model"):
        assert re.search(rf"{stage}: no cached artifact", first), stage
        assert re.search(rf"{stage}: reusing cached artifact", second), stage
    # One cached artifact per upstream stage, and one group for the whole sweep.
    for stage in ("sft", "preferences", "reward_model"):
        assert len(list((tmp_path / "cache" / stage).iterdir())) == 1
    groups = {re.search(r"wandb group: (\S+)", log).group(1) for log in (first, second)}
    assert groups == {"sweep"}
    assert list((sweep / "0" / "wandb").glob("offline-run-*")), "wandb ran offline in the run directory"
    # Every policy's held-out responses, side by side, as a wandb table of the eval run.
    (table,) = (sweep / "0" / "wandb").glob("offline-run-*/files/media/table/eval/samples_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"][:3] == ["prompt", "sft_response", "ppo_response"] and len(content["data"]) > 0
    lrs = [json.loads((sweep / j / "metrics.json").read_text()) for j in ("0", "1")]
    # Different learning rates move the policy by different amounts.
    assert lrs[0]["eval/ppo/kl"] != pytest.approx(lrs[1]["eval/ppo/kl"], rel=1e-3)


def test_local_hf_model_trains_through_from_pretrained(tmp_path):
    """model.name_or_path takes any saved causal LM; here a GPT-2 of a different shape than the toy one."""
    from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

    model_dir = tmp_path / "my-gpt2"
    make_toy_task(ToyTaskConfig(num_sft_examples=200, n_layer=1, n_embd=32, n_head=2), seed=3).build_base_model(model_dir)
    args = [*TINY, f"model.name_or_path={model_dir}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "run" / "policy").n_embd == 32
    assert not (tmp_path / "cache" / "base").exists()


def test_missing_model_path_fails_with_one_message(tmp_path, refused):
    code, err = refused([*TINY, "model.name_or_path=/no/such/model", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"])
    assert code == 2
    assert "model.name_or_path: model directory '/no/such/model' does not exist" in err
    assert "Traceback" not in err


NAN_AFTER_TWO_UPDATES = """
import sys, torch
import rlhf_lab.algos.ppo as ppo
original = ppo.PPOModule.minibatch_loss
calls = {"n": 0}
def poisoned(self, *args):
    out = original(self, *args)
    calls["n"] += 1
    if calls["n"] > 4:
        out["loss"] = out["loss"] * float("nan")
    return out
ppo.PPOModule.minibatch_loss = poisoned
from rlhf_lab.cli import main
sys.argv = ["rlhf_lab", *sys.argv[1:]]
main()
"""


def test_nan_loss_stops_with_stage_step_and_keeps_last_checkpoint(tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    args = [*TINY, "algo.total_episodes=128", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}", "logger=csv", "trainer.checkpoint_every_n_steps=2"]
    result = subprocess.run([sys.executable, "-c", NAN_AFTER_TWO_UPDATES, *args], cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "stage 'policy', step 4: loss is nan" in result.stderr
    checkpoint = run_dir / "checkpoints" / "policy" / "last.ckpt"
    assert str(checkpoint.parent) in result.stderr
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert not (run_dir / "metrics.json").exists()


def test_same_seed_same_figures_other_seed_other_figures(tmp_path):
    def figures(name: str, seed: int) -> dict:
        args = [*TINY, f"seed={seed}", f"cache_dir={tmp_path / name / 'cache'}", f"hydra.run.dir={tmp_path / name / 'run'}", "logger=csv"]
        result = run_cli(args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return {k: v for k, v in read_metrics(tmp_path / name / "run").items() if not k.startswith("time/")}

    first, again, other = figures("a", 0), figures("b", 0), figures("c", 1)
    assert first == again
    assert first != other


# --- every algorithm, and a route that follows it ----------------------------------------------------

ONLINE = ("ppo", "a2c", "reinforce", "rloo", "grpo")


def test_every_online_algorithm_in_one_sweep_shares_upstream_stages_and_writes_the_comparison(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", f"algo={','.join(ONLINE)}", *TINY_UPSTREAM, *TINY_FEEDBACK, *TINY_ONLINE,
            f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", "logger=csv"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, algo in enumerate(ONLINE):
        metrics = read_metrics(sweep / str(job))
        for figure in ("gold_reward", "proxy_reward", "kl", "response_length", "perplexity", "win_rate"):
            assert math.isfinite(metrics[f"eval/{algo}/{figure}"]), (algo, figure)
        assert metrics[f"eval/{algo}/kl"] != 0.0  # the policy moved
        assert (sweep / str(job) / "policy" / "config.json").is_file()
    # SFT, feedback and the reward model were built once for the five algorithms.
    for stage in ("sft", "preferences", "reward_model"):
        assert len(list((tmp_path / "cache" / stage).iterdir())) == 1, stage
    table = (sweep / "comparison.csv").read_text()
    for algo in ONLINE:
        assert algo in table
    assert (sweep / "comparison.md").is_file()
    assert (sweep / "overoptimisation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dpo_trains_on_preferences_and_builds_no_reward_model(tmp_path):
    args = [*TINY_UPSTREAM, "feedback.rounds=1", "algo=dpo", "algo.epochs=1", f"cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert not (tmp_path / "cache" / "reward_model").exists()
    assert "eval/dpo/proxy_reward" not in metrics and math.isfinite(metrics["eval/dpo/gold_reward"])
    assert metrics["eval/dpo/kl"] > 0
    header = (tmp_path / "run" / "csv" / "policy" / "metrics.csv").read_text().splitlines()[0]
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "val/rewards/accuracies"):
        assert name in header, name


def test_best_of_n_trains_nothing_and_reports_its_kl_beside_the_closed_form(tmp_path):
    args = [*TINY_UPSTREAM, *TINY_FEEDBACK, "algo=best_of_n", "algo.n=4", "algo.kl_samples=16",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert not (tmp_path / "run" / "policy").exists() and not (tmp_path / "run" / "checkpoints" / "policy").exists()
    assert metrics["eval/best_of_n/kl_closed_form"] == pytest.approx(math.log(4) - 3 / 4)
    assert 0 < metrics["eval/best_of_n/kl"] < 2 * metrics["eval/best_of_n/kl_closed_form"]
    # it keeps the best of 4 by the proxy reward: the proxy gain is real, not noise
    assert metrics["eval/best_of_n/proxy_reward_diff"] > 2 * metrics["eval/best_of_n/proxy_reward_diff_se"]


def test_a_rule_reward_needs_no_feedback_and_no_reward_model(tmp_path):
    args = [*TINY_UPSTREAM, *TINY_ONLINE, "algo=rloo", "reward=rule", "reward.function=rlhf_lab.rewards.rules:word_count",
            "+reward.kwargs.target=3", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert not (tmp_path / "cache" / "preferences").exists() and not (tmp_path / "cache" / "reward_model").exists()
    # the proxy reward is the rule itself: minus the distance from 3 words (ids decoded, EOS dropped)
    assert metrics["eval/sft/proxy_reward"] <= 0 and metrics["eval/rloo/proxy_reward"] <= 0


@pytest.mark.parametrize("override,message", [
    ("reward=rule", "'reward=rule': algo=dpo does not use a reward (it consumes: preferences)"),
    ("reward.epochs=3", "'reward.epochs=3': algo=dpo does not use a reward"),
])
def test_a_setting_the_algorithm_does_not_use_fails_before_any_work(tmp_path, override, message, refused):
    code, err = refused(["algo=dpo", override, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"])
    assert code == 2 and message in err, err[-2000:]
    assert not (tmp_path / "cache").exists()


def test_rule_reward_kwargs_the_function_does_not_take_fail_before_any_work(tmp_path, refused):
    args = ["algo=rloo", "reward=rule", "reward.function=rlhf_lab.rewards.rules:word_count", "+reward.kwargs.targt=3",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"]
    code, err = refused(args)
    assert code == 2 and "reward.kwargs {'targt': 3} do not fit rlhf_lab.rewards.rules:word_count" in err, err[-2000:]
    assert not (tmp_path / "cache").exists()


def test_a_step_limit_stops_sft_and_dpo_before_their_epochs_end(tmp_path):
    """``sft.max_steps`` and ``algo.max_steps`` (likewise ``reward.max_steps``) bound a stage whatever the
    size of the data: SFT's epoch here is 7 steps, DPO's two epochs more than 3."""
    args = [*TINY_UPSTREAM, "feedback.rounds=1", "algo=dpo", "sft.max_steps=2", "algo.max_steps=3", "logger=csv",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage, steps in (("sft", 2), ("policy", 3)):
        checkpoint = torch.load(tmp_path / "run" / "checkpoints" / stage / "last.ckpt", map_location="cpu", weights_only=False)
        assert checkpoint["global_step"] == steps, stage
    assert "eval/dpo/kl" in read_metrics(tmp_path / "run")
