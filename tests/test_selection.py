"""Acquisition rules for choosing comparisons: by hand, and their defining behaviour."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlhf_lab.ops.selection import disagreement, information_gain, member_preferences, record_acquisition, top_k

LN3 = math.log(3.0)


def _h(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_member_preferences_are_bradley_terry():
    scores = torch.tensor([[0.0, 0.0, LN3], [0.0, LN3, 0.0]])
    probs = member_preferences(scores, torch.tensor([0, 2]), torch.tensor([1, 1]))
    # member 0: sigma(0 - 0) = 1/2, sigma(ln 3 - 0) = 3/4; member 1: sigma(0 - ln 3) = 1/4, sigma(0 - ln 3) = 1/4
    assert probs.tolist() == [pytest.approx([0.5, 0.75]), pytest.approx([0.25, 0.25])]


def test_disagreement_and_information_by_hand():
    probs = torch.tensor([[0.5], [0.25]])
    assert disagreement(probs).item() == pytest.approx(0.125**2)  # mean 0.375, deviations +-0.125, over K = 2
    assert information_gain(probs).item() == pytest.approx(_h(0.375) - (_h(0.5) + _h(0.25)) / 2, rel=1e-5)
    assert information_gain(probs).item() == pytest.approx(0.033822, abs=1e-6)


def test_information_prefers_confident_contradiction_to_shared_doubt():
    probs = torch.tensor([[0.99, 0.5, 0.9], [0.01, 0.5, 0.9]])  # contradiction, both unsure, agreement
    info = information_gain(probs)
    assert info[0].item() == pytest.approx(math.log(2) - _h(0.01))
    assert info[1].item() == pytest.approx(0.0, abs=1e-9) and info[2].item() == pytest.approx(0.0, abs=1e-9)
    assert disagreement(probs)[1:].tolist() == pytest.approx([0.0, 0.0])
    assert 0 <= info.min() and info.max() <= math.log(2)


def test_record_acquisition_is_the_mean_over_each_records_pairs():
    scores = torch.tensor([[0.0, 0.0, LN3, 1.0, 1.0], [0.0, LN3, 0.0, 1.0, 1.0]])
    values = record_acquisition(scores, [[0, 1], [0, 1, 2], [3, 4]], "disagreement")
    pairs = disagreement(member_preferences(scores, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2])))
    assert values[0].item() == pytest.approx(pairs[0].item())
    assert values[1].item() == pytest.approx(pairs.mean().item())
    assert values[2].item() == 0.0  # the members agree exactly
    with pytest.raises(ValueError, match="choose one of"):
        record_acquisition(scores, [[0, 1]], "random")
    with pytest.raises(ValueError, match="K >= 2"):
        record_acquisition(scores[:1], [[0, 1]], "information")


def test_top_k_takes_the_largest_and_breaks_ties_by_the_generator():
    assert top_k(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2) == [1, 3]
    ties = torch.zeros(6)
    draws = {tuple(sorted(top_k(ties, 3, torch.Generator().manual_seed(s)))) for s in range(20)}
    assert len(draws) > 1
    assert top_k(ties, 3, torch.Generator().manual_seed(4)) == top_k(ties, 3, torch.Generator().manual_seed(4))


# --- the feedback stage ------------------------------------------------------------------------------

from rlhf_lab.run.builders.active_selection import batch_sizes  # noqa: E402


def test_batch_sizes_cover_the_total_without_empty_batches():
    assert batch_sizes(10, 4) == [3, 3, 2, 2]
    assert batch_sizes(3, 5) == [1, 1, 1]
    assert batch_sizes(7, 1) == [7]


@pytest.mark.slow
def test_selected_records_are_the_ones_the_ensemble_is_least_sure_of(tmp_path, monkeypatch, capsys):
    import json

    from conftest import TINY_UPSTREAM, read_metrics, run_main

    monkeypatch.chdir(tmp_path)
    upstream = [o for o in TINY_UPSTREAM if not o.startswith("eval.")]

    def run(name, *overrides):
        code, err = run_main([*upstream, "feedback.rounds=1", "reward.epochs=2", "stop_after=preferences", f"cache_dir={tmp_path / 'cache'}",
                              f"hydra.run.dir={tmp_path / name}", "logger=csv", *overrides], monkeypatch, capsys)
        assert code == 0, err[-3000:]
        return read_metrics(tmp_path / name)

    plain = run("random")
    chosen = run("information", "feedback.selection=information", "feedback.pool=3", "feedback.selection_batches=2", "reward.ensemble_size=2")
    assert chosen["feedback/train_records"] == plain["feedback/train_records"]  # the same number of labels
    assert chosen["feedback/train_pool_sets"] == 3 * plain["feedback/train_records"]
    assert chosen["feedback/train_selection_batches"] == 2
    # the half chosen by the ensemble fitted to the first half is the most informative part of what was left
    assert chosen["feedback/train_selected_information"] > chosen["feedback/train_pool_information"] > 0
    assert "feedback/train_pool_sets" not in plain
    assert chosen["feedback/heldout_records"] == plain["feedback/heldout_records"]
    paths = json.loads((tmp_path / "information" / "paths.json").read_text())
    records = [json.loads(line) for line in open(Path(paths["preferences"]) / "train.jsonl")]
    assert all(r["response_ids"] and len(r["response_ids"]) == len(r["responses"]) for r in records)
    # the two ensemble members were trained between the batches, each as its own stage
    assert (tmp_path / "information" / "csv" / "selection1_member1").is_dir()
