"""Reward-model ensembles: the objectives by hand, the reward function, the files, and a run end to end."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from rlhf_lab.ops.ensemble import OBJECTIVES, ensemble_reward, member_spread
from rlhf_lab.rewards.configs import ENSEMBLE_OBJECTIVES, PairwiseRewardConfig
from rlhf_lab.rewards.ensemble_files import member_dirs, write_members
from rlhf_lab.rewards.function import EnsembleReward, scored

from conftest import TINY_UPSTREAM, read_metrics, run_main

# Three members' scores of two responses: the first they disagree on, the second they agree on.
SCORES = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])


def test_objectives_by_hand():
    # mean 3; sample std sqrt(((1-3)^2 + 0 + (5-3)^2) / 2) = 2; variance over K = 8 / 3
    assert member_spread(SCORES).tolist() == pytest.approx([2.0, 0.0])
    assert ensemble_reward(SCORES, "mean").tolist() == pytest.approx([3.0, 2.0])
    assert ensemble_reward(SCORES, "mean_minus_std", 0.5).tolist() == pytest.approx([2.0, 2.0])
    assert ensemble_reward(SCORES, "worst_case").tolist() == pytest.approx([1.0, 2.0])
    assert ensemble_reward(SCORES, "uncertainty_weighted", 0.5).tolist() == pytest.approx([3.0 - 4.0 / 3.0, 2.0])


def test_every_conservative_objective_ranks_a_disputed_response_below_an_agreed_one_of_equal_mean():
    scores = torch.tensor([[0.0, 1.0], [2.0, 1.0]])  # same mean 1, spread sqrt(2) against 0
    assert ensemble_reward(scores, "mean").tolist() == pytest.approx([1.0, 1.0])
    for objective in ("mean_minus_std", "worst_case", "uncertainty_weighted"):
        disputed, agreed = ensemble_reward(scores, objective, 1.0).tolist()
        assert disputed < agreed == pytest.approx(1.0), objective


def test_bad_shapes_and_names_are_refused():
    with pytest.raises(ValueError, match="K >= 2"):
        member_spread(torch.ones(1, 4))
    with pytest.raises(ValueError, match="choose one of"):
        ensemble_reward(SCORES, "median")
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        ensemble_reward(torch.ones(4), "mean")


def test_config_names_the_objectives_ops_implements():
    assert tuple(OBJECTIVES) == ENSEMBLE_OBJECTIVES


@pytest.mark.parametrize("fields, message", [
    ({"ensemble_size": 0}, "ensemble_size must be >= 1"),
    ({"ensemble_objective": "median", "ensemble_size": 3}, "ensemble_objective must be one of"),
    ({"ensemble_objective": "worst_case"}, "needs a spread: set reward.ensemble_size >= 2"),
    ({"ensemble_size": 3, "ensemble_coef": -1.0}, "ensemble_coef must be >= 0"),
])
def test_config_refuses(fields, message):
    with pytest.raises(ValueError, match=message):
        PairwiseRewardConfig(**fields)


class _Fixed:
    """A member whose score of row i is ``values[i]``."""

    def __init__(self, values):
        self.values = torch.tensor(values)

    def __call__(self, batch):
        return self.values[: batch["input_ids"].shape[0]]

    def to(self, device):
        return self


def test_ensemble_reward_combines_members_and_reports_mean_and_spread():
    reward = EnsembleReward([_Fixed(row) for row in SCORES.tolist()], "worst_case")
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long)}
    scores, details = scored(reward, batch)
    assert scores.tolist() == pytest.approx([1.0, 2.0])
    assert reward(batch).tolist() == pytest.approx([1.0, 2.0])
    assert details["reward_mean"].tolist() == pytest.approx([3.0, 2.0])
    assert details["reward_spread"].tolist() == pytest.approx([2.0, 0.0])
    with pytest.raises(ValueError, match="two or more"):
        EnsembleReward([_Fixed([1.0])])


def test_a_plain_reward_function_has_no_details():
    scores, details = scored(lambda batch: torch.ones(2), {})
    assert scores.tolist() == [1.0, 1.0] and details == {}


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_members_file_survives_the_cache_renaming_the_directory(tmp_path):
    members = [_model_dir(tmp_path / "reward_model" / key) for key in ("aaa", "bbb")]
    tmp = tmp_path / "reward_ensemble" / ".key.tmp-1"
    tmp.mkdir(parents=True)
    write_members(tmp, members)
    final = tmp_path / "reward_ensemble" / "key"
    os.replace(tmp, final)
    assert member_dirs(final) == [m.resolve() for m in members]
    assert member_dirs(members[0]) == [members[0]]  # a model directory is one reward model
    assert all(not Path(p).is_absolute() for p in json.loads((final / "members.json").read_text())["members"])


def test_a_lost_member_is_named(tmp_path):
    members = [_model_dir(tmp_path / "reward_model" / key) for key in ("aaa", "bbb")]
    (tmp_path / "ens").mkdir()
    write_members(tmp_path / "ens", members)
    (members[1] / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="bbb.*run the same command again"):
        member_dirs(tmp_path / "ens")


GRPO = ["feedback.rounds=1", "reward.epochs=1", "algo=grpo", "algo.total_episodes=32", "algo.rollout_batch_size=8"]


def _run(tmp_path, monkeypatch, capsys, name: str, *overrides: str, upstream: list = TINY_UPSTREAM) -> dict:
    argv = [*upstream, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / name}", "logger=csv", *overrides]
    code, err = run_main(argv, monkeypatch, capsys)
    assert code == 0, err[-3000:]
    return read_metrics(tmp_path / name)


def _logged(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "policy" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_an_ensemble_run_trains_members_once_and_optimises_the_objective(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ensemble = _run(tmp_path, monkeypatch, capsys, "ensemble", *GRPO, "reward.ensemble_size=3", "reward.ensemble_objective=worst_case")
    single = _run(tmp_path, monkeypatch, capsys, "single", *GRPO[:3], "stop_after=reward_model", upstream=[o for o in TINY_UPSTREAM if not o.startswith("eval.")])
    models = sorted(p.name for p in (tmp_path / "cache" / "reward_model").iterdir() if not p.name.startswith("."))
    assert len(models) == 3  # the single reward model is member 0, reused
    assert len([p for p in (tmp_path / "cache" / "reward_ensemble").iterdir() if not p.name.startswith(".")]) == 1
    accuracies = [ensemble[f"reward/member{k}_accuracy"] for k in range(3)]
    assert accuracies[0] == pytest.approx(single["reward/accuracy"])
    assert len(set(accuracies)) > 1  # members differ: their own head initialisation and data order
    assert ensemble["reward/ensemble_size"] == 3
    assert ensemble["reward/accuracy"] == pytest.approx(sum(accuracies) / 3)
    # The members disagree on the policy's samples, and the worst case is below their mean: in every
    # rollout the policy trained on, and in evaluation.
    rollouts = [r for r in _logged(tmp_path / "ensemble") if r.get("rollout/reward_spread")]
    assert len(rollouts) == 4  # 32 episodes of 8 prompts
    for r in rollouts:
        assert float(r["rollout/reward_spread"]) > 0 and float(r["rollout/proxy_reward"]) < float(r["rollout/reward_mean"])
    assert ensemble["eval/grpo/reward_spread"] > 0 and ensemble["eval/grpo/proxy_reward"] < ensemble["eval/grpo/reward_mean"]
    assert math.isfinite(ensemble["eval/grpo/gold_reward"])
    # The ensemble given by path to another run: loaded whole, combined by that run's objective.
    ensemble_dir = next(p for p in (tmp_path / "cache" / "reward_ensemble").iterdir() if not p.name.startswith("."))
    given = _run(tmp_path, monkeypatch, capsys, "given", f"reward.path={ensemble_dir}", "reward.ensemble_size=3",
                 "reward.ensemble_objective=mean_minus_std", "reward.ensemble_coef=2.0", "algo=best_of_n", "algo.n=4")
    assert given["eval/best_of_n/reward_spread"] > 0
    assert given["eval/best_of_n/proxy_reward"] == pytest.approx(given["eval/best_of_n/reward_mean"] - 2.0 * given["eval/best_of_n/reward_spread"], abs=0.05)
    code, err = run_main([*TINY_UPSTREAM, "algo=best_of_n", f"reward.path={ensemble_dir}", "reward.ensemble_size=2",
                          f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'refused'}"], monkeypatch, capsys)
    assert code == 2 and "reward.ensemble_size=2, but reward.path=" in err and "holds 3 reward model(s)" in err
