"""Preference records, the simulated annotators and the dataset source."""

from __future__ import annotations

import math

import pytest

from rlhf_lab.errors import DataError, RlhfLabError
from rlhf_lab.feedback.dataset import DatasetFeedback, DatasetFeedbackConfig
from rlhf_lab.records import PreferenceRecord, read_jsonl, write_jsonl
from rlhf_lab.feedback.simulated import SimulatedFeedback, SimulatedFeedbackConfig
from rlhf_lab.tasks.base import Task
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task, toy_utility

from conftest import TINY, read_metrics, run_cli

TINY_NO_FEEDBACK = [a for a in TINY if not a.startswith("feedback.")]


def test_ranking_of_k_yields_all_k_choose_2_pairs():
    record = PreferenceRecord(prompt="p", responses=["a", "b", "c", "d"], ranking=[2, 0, 3, 1])
    assert record.preference_pairs() == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]


def test_scores_yield_pairs_without_ties():
    record = PreferenceRecord(prompt="p", responses=["a", "b", "c"], scores=[1.0, 3.0, 1.0])
    assert record.preference_pairs() == [(1, 0), (1, 2)]


def test_toy_utility_by_hand():
    prompt = "describe the quiet garden ."
    # +1 (lovely) -1 (dull) + 1 (on topic) + 0.1 * 6 words
    assert toy_utility(prompt, "the garden is lovely and dull .", 0.1) == pytest.approx(0.0 + 1.0 + 0.7)
    # off topic: -1, great +1, 5 words
    assert toy_utility(prompt, "the cat is great .", 0.1) == pytest.approx(1.0 - 1.0 + 0.5)


def test_toy_task_is_deterministic_under_seed():
    a, b, c = (make_toy_task(ToyTaskConfig(num_sft_examples=50), seed) for seed in (1, 1, 2))
    assert a.sft_train == b.sft_train and a.eval_prompts == b.eval_prompts
    assert a.sft_train != c.sft_train
    assert not set(a.train_prompts) & set(a.eval_prompts)


def test_simulated_rankings_follow_bradley_terry():
    """With utilities 1 and 0 and beta 0.5, the first wins with probability sigmoid(2) = 0.881."""
    task = Task([], [], [], [], utility=lambda prompt, response: float(response == "good"))
    source = SimulatedFeedback(SimulatedFeedbackConfig(num_annotators=1, beta=0.5), task)
    records = source.collect(["p"] * 4000, [["good", "bad"]] * 4000, kind="ranking", seed=0)
    wins = sum(r.ranking[0] == 0 for r in records) / len(records)
    assert wins == pytest.approx(1 / (1 + math.exp(-2.0)), abs=0.02)
    ratings = source.collect(["p"] * 4000, [["good", "bad"]] * 4000, kind="rating", seed=0)
    mean_gap = sum(r.scores[0] - r.scores[1] for r in ratings) / len(ratings)
    assert mean_gap == pytest.approx(1.0, abs=0.05)


def test_simulated_annotators_differ_in_noise():
    task = Task([], [], [], [], utility=lambda p, r: 0.0)
    source = SimulatedFeedback(SimulatedFeedbackConfig(num_annotators=3, beta=0.4), task)
    assert source._betas() == pytest.approx([0.2, 0.4, 0.6])
    records = source.collect(["p"] * 300, [["a", "b"]] * 300, kind="ranking", seed=0)
    assert {r.annotator for r in records} == {"sim0", "sim1", "sim2"}


def test_simulated_needs_a_gold_utility():
    with pytest.raises(RlhfLabError, match="needs a task with a hidden utility"):
        SimulatedFeedback(SimulatedFeedbackConfig(), Task([], [], [], []))


def test_jsonl_round_trip(tmp_path):
    records = [PreferenceRecord(prompt="p", responses=["a", "b"], ranking=[1, 0], annotator="x", meta={"k": 1})]
    write_jsonl(records, tmp_path / "r.jsonl")
    assert read_jsonl(tmp_path / "r.jsonl") == records


@pytest.mark.parametrize(
    "line,problem",
    [
        ("{not json", "Expecting property name"),
        ('{"prompt": "p", "responses": ["a", "b"]}', "needs 'ranking' or 'scores'"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}', "not a permutation"),
        ('{"prompt": "p", "responses": ["a", "b"], "scores": [1.0]}', "1 scores for 2 responses"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "color": 3}', "unknown field(s) ['color']"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, problem):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}\n' + line + "\n")
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert str(info.value).startswith(f"{path}:2: malformed preference record")
    assert problem in str(info.value)


def test_dataset_source_splits_and_checks_kind(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_jsonl([PreferenceRecord(prompt=f"p{i}", responses=["a", "b"], ranking=[0, 1]) for i in range(20)], path)
    source = DatasetFeedback(DatasetFeedbackConfig(path=str(path), heldout_fraction=0.25), task=None)
    train = source.collect([], [], kind="ranking", seed=0, split="train")
    heldout = source.collect([], [], kind="ranking", seed=0, split="heldout")
    assert len(train) == 15 and len(heldout) == 5
    assert not {r.prompt for r in train} & {r.prompt for r in heldout}
    with pytest.raises(RlhfLabError, match="has no 'scores'"):
        source.collect([], [], kind="rating", seed=0)


@pytest.mark.slow
def test_cli_trains_reward_model_from_a_preference_file(tmp_path):
    task = make_toy_task(ToyTaskConfig(num_sft_examples=50), seed=0)
    records = [
        PreferenceRecord(prompt=p, responses=["the cat is great and lovely .", "the cat is awful ."], ranking=[0, 1], annotator="file")
        for p in task.train_prompts
    ]
    write_jsonl(records, tmp_path / "prefs.jsonl")
    args = [*TINY_NO_FEEDBACK, "feedback=dataset", f"feedback.path={tmp_path / 'prefs.jsonl'}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert metrics["feedback/train_records"] + metrics["feedback/heldout_records"] == len(records)
    assert metrics["feedback/train_pairs"] == metrics["feedback/train_records"]


def test_cli_malformed_preference_file_exits_2_naming_the_line(tmp_path, refused):
    (tmp_path / "prefs.jsonl").write_text('{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}\n{"prompt": 3}\n')
    args = [*TINY_NO_FEEDBACK, "feedback=dataset", f"feedback.path={tmp_path / 'prefs.jsonl'}", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"]
    code, err = refused(args)
    assert code == 2
    assert f"{tmp_path / 'prefs.jsonl'}:2: field 'prompt' is a int here but a str on an earlier line" in err
    assert "Traceback" not in err
    # Nothing half-built is left in the cache for a later run to trust.
    assert not list((tmp_path / "cache" / "preferences").glob("*/ARTIFACT_COMPLETE"))
