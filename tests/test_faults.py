"""Faults during work: a diverged stage stops where it diverged, and no NaN or infinite figure is written."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from rlhf_lab.config import check_finite_numbers
from rlhf_lab.errors import NonFiniteLossError, RlhfLabError, check_weights_finite, nonfinite_figures
from rlhf_lab.records import PreferenceRecord
from rlhf_lab.run.builders.preferences import gold_agreement
from rlhf_lab.run.outputs import write_metrics
from rlhf_lab.stages.sft import check_converged

from test_bad_inputs import TINY, run_main


def test_non_finite_numbers_anywhere_in_the_config_are_named():
    from omegaconf import OmegaConf

    check_finite_numbers(OmegaConf.create({"a": {"b": [1.0, 2]}, "c": "nan"}))  # text is not a number
    for bad, key in (({"a": {"b": [1.0, float("nan")]}}, "a.b[1]"), ({"x": float("-inf")}, "x"), ({"s": {"t": float("inf")}}, "s.t")):
        with pytest.raises(RlhfLabError, match=re.escape(f"config '{key}' is")):
            check_finite_numbers(OmegaConf.create(bad))


def test_a_figure_that_is_not_finite_fails_the_run_and_keeps_every_figure_elsewhere(tmp_path):
    write_metrics(tmp_path, {"eval/ppo/kl": 0.5})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"eval/ppo/kl": 0.5}
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(RlhfLabError, match=r"2 figure\(s\) that are not finite numbers: eval/ppo/kl=nan, eval/sft/perplexity=inf"):
        write_metrics(tmp_path, {"eval/ppo/kl": float("nan"), "eval/sft/perplexity": math.inf, "eval/ppo/gold_reward": 1.0, "n": 3})
    assert not (tmp_path / "metrics.json").exists()
    kept = json.loads((tmp_path / "metrics.nonfinite.json").read_text())
    assert kept == {"eval/ppo/kl": "nan", "eval/sft/perplexity": "inf", "eval/ppo/gold_reward": "1.0", "n": "3"}
    assert nonfinite_figures({"a": 1.0, "b": float("-inf"), "c": "text"}) == ["b=-inf"]


def test_weights_that_are_not_finite_stop_the_stage_naming_the_tensor():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    check_weights_finite(model, "reward")
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"stage 'reward' ended with NaN or infinite weights in 1 tensor\(s\), the first 1.bias"):
        check_weights_finite(model, "reward")


def test_sft_worse_than_a_uniform_guess_is_a_divergence():
    check_converged(math.log(600) + 0.99, 600, 1e-3)
    for loss in (math.log(600) + 1.01, math.inf, math.nan):
        with pytest.raises(NonFiniteLossError, match="stage 'sft' diverged"):
            check_converged(loss, 600, 1e-3)


def test_gold_agreement_without_a_single_pair_is_not_reported():
    tied = PreferenceRecord(prompt="p", responses=["a", "b"], scores=[1.0, 1.0])
    assert gold_agreement([tied], lambda prompt, response: 0.0) is None
    ranked = PreferenceRecord(prompt="p", responses=["a", "bb"], ranking=[1, 0])
    assert gold_agreement([ranked], lambda prompt, response: len(response)) == 1.0


def test_a_diverging_sft_stops_at_its_end_with_nothing_published(tmp_path, monkeypatch, capsys):
    code, err = run_main([*TINY, "sft.lr=1e3", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2 and "stage 'sft' diverged: its held-out loss is" in err and "lower sft.lr (now 1000)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "cache" / "sft").exists() or not any((tmp_path / "cache" / "sft").iterdir())
    assert not (tmp_path / "run" / "metrics.json").exists()
