"""Iterated RLHF (``loop.rounds``, rlhf_lab/run/loop.py) through the real CLI: rounds build on each other,
every round is evaluated, a restart reuses finished rounds and asks for no label again, and loops
that cannot run are refused before any work."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from conftest import TINY, TINY_UPSTREAM, read_metrics, run_cli

from rlhf_lab.labelling.store import LabelStore

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)


def test_two_rounds_of_ppo_sample_from_the_current_policy_and_retrain_on_all_labels(tmp_path):
    args = [*TINY, "loop.rounds=2", "logger=csv", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert metrics["loop/rounds"] == 2
    # Round 2 adds as many new records as round 1 had, and the reward model trains on both rounds'.
    assert metrics["feedback/train_records_total"] == 2 * metrics["round1/train_records"] == 2 * metrics["feedback/train_records"]
    for round_ in (1, 2):
        assert 0 <= metrics[f"round{round_}/win_rate"] <= 1 and f"round{round_}/gold_reward_se" in metrics
        assert f"round{round_}/accuracy" in metrics  # each round's reward model accuracy
        assert 0 <= metrics[f"round{round_}/pref_accuracy"] <= 1  # each round's policy on round 1's held-out pairs
    assert metrics["eval/heldout_preference_records"] == metrics["feedback/heldout_records"]  # one record per held-out prompt
    assert metrics["round2/gold_reward"] == metrics["eval/ppo/gold_reward"]  # the run's figures are the last round's
    rows = list(csv.DictReader((tmp_path / "run" / "rounds.csv").open()))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert "| round |" in (tmp_path / "run" / "rounds.md").read_text()
    cache = tmp_path / "cache"
    assert len(list((cache / "policy").iterdir())) == 2 and len(list((cache / "reward_model").iterdir())) == 2
    assert len(list((cache / "preferences").iterdir())) == 2
    assert (tmp_path / "run" / "policy" / "config.json").is_file()
    for stage in ("policy", "policy_round2", "reward_model_round2", "eval", "eval_round1"):
        assert (tmp_path / "run" / "csv" / stage).is_dir(), stage
    # Round 2's candidates come from round 1's policy, not from the SFT policy again.
    first, second = sorted((cache / "preferences").iterdir(), key=lambda d: (d / "metrics.json").stat().st_mtime)
    new = [json.loads(line) for line in (second / "train.jsonl").read_text().splitlines()][metrics["round1/train_records"]:]
    old = [json.loads(line) for line in (first / "train.jsonl").read_text().splitlines()]
    assert [r["response_ids"] for r in new] != [r["response_ids"] for r in old]


def test_a_restarted_human_loop_reuses_finished_rounds_and_asks_no_label_again(tmp_path):
    db = tmp_path / "labels.db"
    args = [
        *TINY_UPSTREAM, "algo=dpo", "algo.epochs=1", "loop.rounds=2", "feedback=human", "feedback.labellers=[]",
        "feedback.bot_labellers=2", "feedback.port=0", "feedback.poll_seconds=0.2", f"feedback.db={db}", "logger=csv",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    first = run_cli([*args, f"hydra.run.dir={tmp_path / 'first'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    labels_after_first = LabelStore(db).count_labels("default")
    batches = {item.batch for item in LabelStore(db).items("default")}
    assert batches == {"train-seed0", "heldout-seed1", "train-seed1000", "heldout-seed1001"}
    # A crash in round 2 after the labels were in but before its records were published: the restart
    # finds round 1 in the cache and round 2's labels in the database, and asks for nothing new.
    cache = tmp_path / "cache"
    second_round = max((cache / "preferences").iterdir(), key=lambda d: (d / "metrics.json").stat().st_mtime)
    shutil.rmtree(second_round)
    for stage in ("policy", "reward_model"):
        for artifact in (cache / stage).iterdir() if (cache / stage).is_dir() else []:
            shutil.rmtree(artifact)
    again = run_cli([*args, f"hydra.run.dir={tmp_path / 'again'}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert LabelStore(db).count_labels("default") == labels_after_first
    log = again.stdout + again.stderr
    assert "preferences: reusing cached artifact" in log  # round 1
    a, b = read_metrics(tmp_path / "first"), read_metrics(tmp_path / "again")
    for key in ("round1/gold_reward", "round2/gold_reward", "round2/kl", "feedback/train_records_total"):
        assert a[key] == b[key], key


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loop.rounds=2", "reward=rule", "reward.function=rlhf_lab.rewards.rules.word_count"], "nothing to repeat"),
        (["loop.rounds=2", "algo=best_of_n"], "trains no policy"),
        (["loop.rounds=2", "stop_after=sft"], "stop_after"),
        (["loop.rounds=2", "feedback=dataset", "feedback.path=x.jsonl"], "labels nothing"),
        (["loop.rounds=2", "model.lora.r=4"], "lora"),
        (["loop.rounds=0"], "loop.rounds must be"),
    ],
)
def test_loops_that_cannot_run_are_refused_before_any_work(tmp_path, overrides, message, refused):
    if "feedback.path=x.jsonl" in overrides:
        (tmp_path / "x.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    code, err = refused([*overrides, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2, err[-2000:]
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()
