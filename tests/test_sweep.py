"""The sweep comparison: table rows, Markdown, CSV and plot from a sweep directory on disk."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hydra.types import RunMode
from omegaconf import OmegaConf

from rlhf_lab.sweep import ComparisonCallback, load_jobs, write_comparison
from rlhf_lab.sweep_tables import COLUMNS, Job, comparison_rows

from conftest import SUBPROCESS_TIMEOUT

SFT = {
    "eval/sft/gold_reward": 0.4, "eval/sft/gold_reward_se": 0.05, "eval/sft/proxy_reward": -0.1,
    "eval/sft/proxy_reward_se": 0.04, "eval/sft/kl": 0.0, "eval/sft/kl_se": 0.0,
    "eval/sft/response_length": 9.0, "eval/sft/response_length_se": 0.3, "eval/sft/perplexity": 12.5,
}
PPO = {
    **SFT, "eval/ppo/gold_reward": 1.2, "eval/ppo/gold_reward_se": 0.06, "eval/ppo/proxy_reward": 2.1,
    "eval/ppo/proxy_reward_se": 0.08, "eval/ppo/kl": 3.5, "eval/ppo/kl_se": 0.2, "eval/ppo/win_rate": 0.81,
    "eval/ppo/win_rate_low": 0.74, "eval/ppo/win_rate_high": 0.87, "eval/ppo/response_length": 11.0,
    "eval/ppo/response_length_se": 0.4, "eval/ppo/perplexity": 14.0, "time/total_seconds": 321.5,
}
# DPO trains no reward model, so it has no proxy reward.
DPO = {
    **{k: v for k, v in SFT.items() if "proxy" not in k}, "eval/dpo/gold_reward": 0.7, "eval/dpo/gold_reward_se": 0.05,
    "eval/dpo/kl": 1.25, "eval/dpo/kl_se": 0.1, "eval/dpo/win_rate": 0.6, "eval/dpo/win_rate_low": 0.52,
    "eval/dpo/win_rate_high": 0.68, "eval/dpo/response_length": 9.5, "eval/dpo/response_length_se": 0.3,
    "eval/dpo/perplexity": 13.0, "time/total_seconds": 120.0,
}


def make_job(sweep: Path, number: str, algo: str, metrics: dict | None) -> None:
    """A job directory as Hydra and the pipeline leave it; ``metrics=None`` is a failed job."""
    hydra_dir = sweep / number / ".hydra"
    hydra_dir.mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump([f"algo={algo}"]))
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "algo": {"name": algo}}))
    if metrics is not None:
        (sweep / number / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    make_job(tmp_path, "0", "ppo", PPO)
    make_job(tmp_path, "1", "dpo", DPO)
    make_job(tmp_path, "2", "best_of_n", None)
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")  # Hydra's own file: not a job
    return tmp_path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_rows_put_the_baseline_first_then_every_job(sweep: Path):
    rows = comparison_rows(load_jobs(sweep))
    assert [(r["job"], r["label"], r["algo"], r["status"]) for r in rows] == [
        (None, "sft (baseline of job 0)", "sft", "baseline"),
        ("0", "algo=ppo", "ppo", "ok"),
        ("1", "algo=dpo", "dpo", "ok"),
        ("2", "algo=best_of_n", "best_of_n", "failed"),
    ]
    assert all(set(row) == set(COLUMNS) for row in rows)
    assert rows[0]["gold_reward"] == 0.4 and rows[0]["win_rate"] is None and rows[0]["wall_time_s"] is None
    assert rows[1]["kl"] == 3.5 and rows[1]["win_rate_high"] == 0.87 and rows[1]["wall_time_s"] == 321.5
    assert rows[2]["proxy_reward"] is None and rows[2]["gold_reward"] == 0.7
    assert rows[3]["gold_reward"] is None


def test_rows_leave_out_what_an_algorithm_does_not_measure():
    # best_of_n samples from sft, so it reports no perplexity of its own.
    metrics = {**SFT, "eval/best_of_n/gold_reward": 0.9, "eval/best_of_n/kl": 1.6}
    rows = comparison_rows([Job(number="0", overrides=(), algo="best_of_n", metrics=metrics)])
    assert rows[1]["label"] == "best_of_n"  # no overrides: the algorithm names the row
    assert rows[1]["perplexity"] is None and rows[1]["gold_reward"] == 0.9


def test_jobs_sort_by_number_not_by_name(tmp_path: Path):
    for number in ("10", "2", "0"):
        make_job(tmp_path, number, "ppo", PPO)
    assert [job.number for job in load_jobs(tmp_path)] == ["0", "2", "10"]


def test_algo_comes_from_the_metrics_when_hydra_left_no_config(tmp_path: Path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(DPO))
    assert load_jobs(tmp_path) == [Job(number="0", overrides=(), algo="dpo", metrics=DPO)]


def test_callback_writes_markdown_csv_and_plot(sweep: Path):
    pytest.importorskip("matplotlib")
    ComparisonCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))

    rows = read_csv(sweep / "comparison.csv")
    assert list(rows[0]) == list(COLUMNS)
    assert [r["label"] for r in rows] == ["sft (baseline of job 0)", "algo=ppo", "algo=dpo", "algo=best_of_n"]
    baseline, ppo, dpo, failed = rows
    assert (float(baseline["gold_reward"]), float(baseline["perplexity"]), baseline["win_rate"]) == (0.4, 12.5, "")
    assert (float(ppo["gold_reward"]), float(ppo["gold_reward_se"]), float(ppo["kl"]), float(ppo["wall_time_s"])) == (1.2, 0.06, 3.5, 321.5)
    assert (float(ppo["win_rate"]), float(ppo["win_rate_low"]), float(ppo["win_rate_high"])) == (0.81, 0.74, 0.87)
    assert (dpo["proxy_reward"], dpo["proxy_reward_se"], float(dpo["kl"])) == ("", "", 1.25)
    assert failed["status"] == "failed" and failed["job"] == "2" and failed["gold_reward"] == ""

    markdown = (sweep / "comparison.md").read_text()
    assert "| 0 | algo=ppo | ppo | 1.200 ± 0.060 | 2.100 ± 0.080 | 3.500 ± 0.200 | 0.810 [0.740, 0.870] | 11.00 ± 0.40 | 14.00 | 321.5 |" in markdown
    assert "| 1 | algo=dpo | dpo | 0.700 ± 0.050 | - | 1.250 ± 0.100 |" in markdown
    assert "| 2 | algo=best_of_n | best_of_n | **failed**: it left no metrics.json (killed, or still running) | - |" in markdown
    assert "| - | sft (baseline of job 0) | sft | 0.400 ± 0.050 | -0.100 ± 0.040 | 0.000 ± 0.000 | - |" in markdown

    png = (sweep / "overoptimisation.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_tables_are_written_without_matplotlib(sweep: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib..." raise ImportError
    written = write_comparison(sweep)
    assert [p.name for p in written] == ["comparison.md", "comparison.csv"]
    assert not (sweep / "overoptimisation.png").exists()


def test_job_end_refreshes_the_comparison_only_in_a_multirun(sweep: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the tables are enough to tell
    single = OmegaConf.create({"hydra": {"mode": RunMode.RUN, "sweep": {"dir": str(sweep)}}})
    ComparisonCallback().on_job_end(single, job_return=None)
    assert not (sweep / "comparison.csv").exists()
    multi = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep)}}})
    ComparisonCallback().on_job_end(multi, job_return=None)
    assert len(read_csv(sweep / "comparison.csv")) == 4


def test_jobs_that_did_not_finish_are_listed_with_their_status_and_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from rlhf_lab.sweep import SWEEP_FAILURES, write_job_status

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    make_job(tmp_path, "0", "ppo", PPO)
    for number, status, reason in (("1", "refused", "algo needs lr > 0"), ("2", "stopped", "stopped by SIGTERM"), ("3", "crashed", "boom")):
        make_job(tmp_path, number, "ppo", None)
        write_job_status(tmp_path / number, status, reason)
    make_job(tmp_path, "4", "ppo", None)  # killed: wrote nothing
    make_job(tmp_path, "5", "ppo", None)
    (tmp_path / "5" / "job_status.json").write_text('{"status": "finished", "reason": "a status no job writes"}')
    with pytest.raises(ValueError, match="status must be one of"):
        write_job_status(tmp_path / "0", "ok", "")

    jobs = {job.number: (job.status, job.reason) for job in load_jobs(tmp_path)}
    assert jobs == {"0": ("ok", None), "1": ("refused", "algo needs lr > 0"), "2": ("stopped", "stopped by SIGTERM"), "3": ("crashed", "boom"),
                    "4": ("failed", "it left no metrics.json (killed, or still running)"), "5": ("failed", "a status no job writes")}
    ComparisonCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert SWEEP_FAILURES == ["job 1 (ppo): refused: algo needs lr > 0", "job 2 (ppo): stopped: stopped by SIGTERM",
                              "job 3 (ppo): crashed: boom", "job 4 (ppo): failed: it left no metrics.json (killed, or still running)",
                              "job 5 (ppo): failed: a status no job writes"]
    assert "| 2 | ppo | ppo | **stopped**: stopped by SIGTERM | - |" in (tmp_path / "comparison.md").read_text()
    assert [r["status"] for r in read_csv(tmp_path / "comparison.csv")] == ["baseline", "ok", "refused", "stopped", "crashed", "failed", "failed"]
    SWEEP_FAILURES.clear()


def test_a_preset_is_shown_by_its_name_and_labels_leave_out_paths(tmp_path: Path):
    """``-m algo=dpo,ipo feedback.path=...``: IPO is a preset of dpo (its metrics are eval/dpo/...), shown as
    ipo; a path that differs between jobs is labelled by its last part."""
    make_job(tmp_path, "0", "dpo", DPO)
    make_job(tmp_path, "1", "dpo", {**DPO, "eval/dpo/kl": 2.5})
    for number, choice, path in (("0", "dpo", "/data/hh/harmless-base/test.jsonl"), ("1", "ipo", "/data/hh/helpful-base/train.jsonl")):
        (tmp_path / number / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"algo={choice}", f"feedback.path={path}", "cache_dir=/scratch/c"]))
        (tmp_path / number / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"algo": choice, "task": "dataset"}}}}))
    jobs = load_jobs(tmp_path)
    assert [(job.algo, job.variant) for job in jobs] == [("dpo", None), ("dpo", "ipo")]
    rows = comparison_rows(jobs)
    assert [(r["label"], r["algo"], r["kl"]) for r in rows[1:]] == [
        ("algo=dpo feedback.path=test.jsonl", "dpo", 1.25), ("algo=ipo feedback.path=train.jsonl", "ipo", 2.5)]


def test_overrides_a_job_ignored_are_left_out_of_its_label_and_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from rlhf_lab.sweep import write_ignored_overrides

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    make_job(tmp_path, "0", "dpo", DPO)
    make_job(tmp_path, "1", "grpo", {**PPO, "eval/grpo/kl": 0.5})
    for number, algo in (("0", "dpo"), ("1", "grpo")):
        (tmp_path / number / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"algo={algo}", "feedback=dataset", "feedback.path=/d/hh.jsonl"]))
    write_ignored_overrides(tmp_path / "1", [("feedback=dataset", "algo=grpo does not use preference feedback"),
                                             ("feedback.path=/d/hh.jsonl", "algo=grpo does not use preference feedback")])
    rows = comparison_rows(load_jobs(tmp_path))
    assert [(r["label"], r["ignored"]) for r in rows[1:]] == [
        ("algo=dpo", None),
        ("algo=grpo", "feedback=dataset: algo=grpo does not use preference feedback; feedback.path=hh.jsonl: algo=grpo does not use preference feedback")]
    write_comparison(tmp_path)
    assert "- job 1 ignored feedback=dataset: algo=grpo does not use preference feedback;" in (tmp_path / "comparison.md").read_text()
    assert read_csv(tmp_path / "comparison.csv")[2]["ignored"].startswith("feedback=dataset: ")


def test_real_hydra_sweep_with_a_failing_job_still_gets_a_comparison(tmp_path: Path):
    # Hydra's basic sweeper re-raises the failed job before on_multirun_end, so the table must
    # come from the refresh after each job.
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import json
        from pathlib import Path

        import hydra
        from hydra.core.hydra_config import HydraConfig

        @hydra.main(version_base="1.3", config_path=None, config_name=None)
        def main(cfg):
            if cfg.algo.name == "boom":
                raise RuntimeError("this job fails")
            metrics = {f"eval/{cfg.algo.name}/gold_reward": 1.5, "eval/sft/gold_reward": 0.5}
            Path(HydraConfig.get().runtime.output_dir, "metrics.json").write_text(json.dumps(metrics))

        main()
    """))
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(app), "-m", "+algo.name=ppo,boom,dpo", f"hydra.sweep.dir={sweep}",
         "+hydra.callbacks.comparison._target_=rlhf_lab.sweep.ComparisonCallback"],
        cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode != 0  # the failure still ends the sweep
    rows = read_csv(sweep / "comparison.csv")
    assert [(r["job"], r["label"], r["status"], r["gold_reward"]) for r in rows] == [
        ("", "sft (baseline of job 0)", "baseline", "0.5"),
        ("0", "+algo.name=ppo", "ok", "1.5"),
        ("1", "+algo.name=boom", "failed", ""),
        ("2", "+algo.name=dpo", "ok", "1.5"),
    ]


def test_without_gold_the_table_shows_preference_accuracy_and_win_rates_and_leaves_out_empty_columns(tmp_path: Path):
    sft = {"eval/sft/pref_accuracy": 0.52, "eval/sft/pref_accuracy_se": 0.03, "eval/sft/kl": 0.0, "eval/sft/kl_se": 0.0}
    dpo = {**sft, "eval/dpo/pref_accuracy": 0.61, "eval/dpo/pref_accuracy_se": 0.03, "eval/dpo/kl": 0.4, "eval/dpo/kl_se": 0.05}
    grpo = {**sft, "eval/grpo/pref_accuracy": 0.55, "eval/grpo/pref_accuracy_se": 0.03, "eval/grpo/kl": 0.2, "eval/grpo/kl_se": 0.02,
            "eval/grpo/proxy_win_rate": 0.66, "eval/grpo/proxy_win_rate_low": 0.6, "eval/grpo/proxy_win_rate_high": 0.72,
            "eval/grpo/proxy_lc_win_rate": 0.58, "eval/grpo/proxy_lc_win_rate_low": 0.51, "eval/grpo/proxy_lc_win_rate_high": 0.65}
    make_job(tmp_path, "0", "dpo", dpo)
    make_job(tmp_path, "1", "grpo", grpo)
    write_comparison(tmp_path)
    markdown = (tmp_path / "comparison.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| job"))
    assert header == ("| job | label | algo | held-out preference accuracy ± SE | KL (nats) ± SE | reward-model win rate vs sft [low, high] "
                      "| reward-model LC win rate vs sft [low, high] |")
    assert "| - | sft (baseline of job 0) | sft | 0.520 ± 0.030 | 0.000 ± 0.000 | - | - |" in markdown
    assert "| 0 | algo=dpo | dpo | 0.610 ± 0.030 | 0.400 ± 0.050 | - | - |" in markdown
    assert "| 1 | algo=grpo | grpo | 0.550 ± 0.030 | 0.200 ± 0.020 | 0.660 [0.600, 0.720] | 0.580 [0.510, 0.650] |" in markdown
    rows = read_csv(tmp_path / "comparison.csv")
    assert float(rows[2]["proxy_lc_win_rate_low"]) == 0.51 and rows[1]["judge_win_rate"] == ""


def test_the_plot_draws_every_finished_job_and_sft_in_the_panels_that_have_their_figures(tmp_path: Path):
    pytest.importorskip("matplotlib")
    from rlhf_lab.sweep_plot import plot_overoptimisation

    with_preferences = {**PPO, "eval/sft/pref_accuracy": 0.52, "eval/sft/pref_accuracy_se": 0.03,
                        "eval/ppo/pref_accuracy": 0.6, "eval/ppo/pref_accuracy_se": 0.03}
    jobs = [Job("0", ("algo=ppo",), "ppo", with_preferences), Job("1", ("algo=dpo",), "dpo", DPO), Job("2", ("algo=grpo",), "grpo", None)]
    marks = plot_overoptimisation(comparison_rows(jobs), tmp_path / "both.png")
    assert marks == {"Reward against KL to sft": ["sft", "0", "1"], "Held-out preferences against KL to sft": ["sft", "0"]}
    # Real data, no gold utility and no reward model (DPO): the preference panel alone, SFT at its origin.
    # (SFT sits at KL 0 by definition, whether or not its run recorded its KL to itself.)
    dpo_only = {"eval/sft/pref_accuracy": 0.5, "eval/sft/pref_accuracy_se": 0.03,
                "eval/dpo/pref_accuracy": 0.6, "eval/dpo/pref_accuracy_se": 0.03, "eval/dpo/kl": 0.3, "eval/dpo/kl_se": 0.02}
    marks = plot_overoptimisation(comparison_rows([Job("0", ("algo=dpo",), "dpo", dpo_only)]), tmp_path / "dpo.png")
    assert marks == {"Held-out preferences against KL to sft": ["sft", "0"]}
    assert plot_overoptimisation(comparison_rows([Job("0", (), "dpo", None)]), tmp_path / "none.png") == {}


def test_the_baseline_takes_each_figure_from_the_first_job_that_measured_it():
    # DPO consumes no reward, so its run has no proxy reward for sft; the GRPO job's run does.
    dpo = {"eval/sft/kl": 0.0, "eval/sft/kl_se": 0.0, "eval/sft/pref_accuracy": 0.5, "eval/sft/pref_accuracy_se": 0.03, "eval/dpo/kl": 0.4}
    grpo = {"eval/sft/kl": 0.0, "eval/sft/proxy_reward": -0.2, "eval/sft/proxy_reward_se": 0.05, "eval/grpo/kl": 0.1}
    rows = comparison_rows([Job("0", ("algo=dpo",), "dpo", dpo), Job("1", ("algo=grpo",), "grpo", grpo)])
    assert rows[0]["label"] == "sft (baseline of jobs 0, 1)"
    assert (rows[0]["pref_accuracy"], rows[0]["proxy_reward"], rows[0]["proxy_reward_se"]) == (0.5, -0.2, 0.05)
    rows = comparison_rows([Job("0", ("algo=grpo",), "grpo", grpo), Job("1", ("algo=grpo", "seed=1"), "grpo", grpo)])
    assert rows[0]["label"] == "sft (baseline of job 0)"


def test_a_sweep_over_kl_budgets_gets_gao_fits_and_the_peak_kl_of_gold_reward(tmp_path: Path):
    import math

    # Gold gain d (1 - 0.5 log d): peaks at KL e^2 = 7.39; proxy gain 0.8 d keeps rising (b = 0).
    for number, kl in enumerate((1.0, 4.0, 9.0, 16.0)):
        d = math.sqrt(kl)
        make_job(tmp_path, str(number), "grpo", {
            "eval/sft/gold_reward": 0.0, "eval/grpo/kl": kl, "eval/grpo/kl_se": 0.1, "eval/grpo/gold_reward": d * (1 - 0.5 * math.log(d)),
            "eval/grpo/gold_reward_diff": d * (1 - 0.5 * math.log(d)), "eval/grpo/gold_reward_diff_se": 0.01,
            "eval/grpo/proxy_reward_diff": 0.8 * d, "eval/grpo/proxy_reward_diff_se": 0.01,
        })
    make_job(tmp_path, "4", "dpo", {**DPO, "eval/dpo/gold_reward_diff": 0.3, "eval/dpo/gold_reward_diff_se": 0.05})
    make_job(tmp_path, "5", "dpo", {**DPO, "eval/dpo/kl": 2.0, "eval/dpo/gold_reward_diff": 0.4, "eval/dpo/gold_reward_diff_se": 0.05})
    write_comparison(tmp_path)
    markdown = (tmp_path / "comparison.md").read_text()
    gold = next(line for line in markdown.splitlines() if line.startswith("- grpo, gold reward (4 jobs)"))
    assert "a = 1.000, b = 0.500; peaks at KL 7.39 [" in gold and "extrapolation" not in gold  # measured up to KL 16
    low, high = (float(x) for x in gold.split("peaks at KL 7.39 [")[1].split("]")[0].split(", "))
    assert low < math.e ** 2 < high
    assert "- grpo, proxy reward (4 jobs): a = 0.800, b = " in markdown and "still rising" in markdown
    assert "- dpo" not in markdown  # two jobs: too few to fit two coefficients and judge them
    rows = read_csv(tmp_path / "comparison.csv")
    assert float(rows[1]["gold_reward_diff_se"]) == 0.01


def test_a_peak_beyond_the_measured_kls_is_called_an_extrapolation():
    import math

    from rlhf_lab.sweep_tables import overoptimisation_lines

    jobs = []
    for number, kl in enumerate((0.25, 1.0, 2.25)):
        d = math.sqrt(kl)
        jobs.append(Job(str(number), (f"algo.kl_coef={number}",), "grpo", {
            "eval/grpo/kl": kl, "eval/grpo/gold_reward_diff": d * (1 - 0.5 * math.log(d)), "eval/grpo/gold_reward_diff_se": 0.01}))
    (line,) = overoptimisation_lines(comparison_rows(jobs))
    assert "peaks at KL 7.39" in line and "beyond the largest KL measured (2.25): an extrapolation" in line
