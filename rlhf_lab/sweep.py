"""One comparison of all the jobs of a multirun sweep: a table and an over-optimisation plot.

A sweep (``python -m rlhf_lab -m algo=ppo,dpo``) leaves one directory per job under the sweep
directory, each with ``metrics.json`` and Hydra's ``.hydra/overrides.yaml`` and
``.hydra/config.yaml``. :func:`write_comparison` reads them all and writes ``comparison.md``,
``comparison.csv`` and ``overoptimisation.png`` next to them. :class:`ComparisonCallback` calls it
from Hydra; ``python -m rlhf_lab.sweep SWEEP_DIR`` calls it by hand.

A job that did not finish is a row too: refused (a bad setting), crashed or stopped, with its reason
from the ``job_status.json`` the job wrote as it ended (:func:`write_job_status`), or "failed" when it
left nothing (killed outright).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from rlhf_lab.files import write_atomic

log = logging.getLogger("rlhf_lab.sweep")

BASELINE = "sft"
FIGURES_WITH_SE = ("gold_reward", "proxy_reward", "pref_accuracy", "kl", "response_length")
WIN_RATES = ("win_rate", "proxy_win_rate", "proxy_lc_win_rate", "judge_win_rate", "judge_lc_win_rate")
"""Win rates against the baseline (by gold reward, the reward model, an AI judge; raw and length-controlled),
each a column with its ``_low`` and ``_high``."""
COLUMNS = (
    "job", "label", "algo", "status",
    "gold_reward", "gold_reward_se", "proxy_reward", "proxy_reward_se", "pref_accuracy", "pref_accuracy_se", "kl", "kl_se",
    *(f"{rate}{end}" for rate in WIN_RATES for end in ("", "_low", "_high")),
    "response_length", "response_length_se", "perplexity", "wall_time_s", "reason", "ignored",
)
"""Keys of every row from :func:`comparison_rows`, and the columns of ``comparison.csv``."""
JOB_STATUS = "job_status.json"
"""Written into a job's directory by a job that ends without finishing: its status and reason."""
IGNORED_OVERRIDES = "ignored_overrides.json"
"""Written into a job's directory by a job that ignores overrides of the sweep it does not use (a
sweep over dpo and grpo with feedback.path: grpo reads no preferences), each with why."""
UNFINISHED = ("refused", "crashed", "stopped", "failed")
"""Statuses of a job that left no metrics: a setting refused, an error, a stop signal, or unknown."""
SWEEP_FAILURES: list[str] = []
"""The jobs of the last multirun (this process) that did not finish, ``"<job>: <status>: <reason>"``;
the command line exits non-zero when any is listed."""


def write_ignored_overrides(job_dir: Path, ignored: list[tuple[str, str]]) -> None:
    """Record in ``job_dir`` the sweep's overrides its job ignores, as ``(override, why)`` pairs."""
    write_atomic(Path(job_dir) / IGNORED_OVERRIDES, json.dumps([{"override": o, "why": why} for o, why in ignored]).encode())


def write_job_status(job_dir: Path, status: str, reason: str) -> None:
    """Record in ``job_dir`` that its job ended ``status`` (one of :data:`UNFINISHED`) and why."""
    if status not in UNFINISHED:
        raise ValueError(f"status must be one of {UNFINISHED}, got {status!r}")
    write_atomic(Path(job_dir) / JOB_STATUS, json.dumps({"status": status, "reason": reason}).encode())


@dataclass(frozen=True)
class Job:
    """One job of a sweep as found on disk.

    :param number: the job directory's name (Hydra's job number).
    :param overrides: the job's command-line overrides, e.g. ``("algo=dpo",)``.
    :param algo: the algorithm name (``algo.name``), or ``None`` when unknown.
    :param metrics: the job's ``metrics.json``, or ``None`` when the job left none (it failed).
    :param status: ``"ok"`` (metrics written), or one of :data:`UNFINISHED`.
    :param reason: why the job did not finish; ``None`` for a finished one.
    :param variant: the ``algo`` option the job chose when it is a preset of another algorithm
        (``algo=ipo`` runs ``dpo`` with the IPO loss), else ``None``.
    :param ignored: the sweep's overrides this job did not use, with why (:data:`IGNORED_OVERRIDES`).
    """

    number: str
    overrides: tuple[str, ...]
    algo: str | None
    metrics: dict | None
    status: str = "ok"
    reason: str | None = None
    variant: str | None = None
    ignored: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """The overrides joined by a space, else the algorithm name, else the job number."""
        return " ".join(self.overrides) or self.algo or self.number


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` (one holding ``.hydra/`` or ``metrics.json``).

    :param sweep_dir: the sweep directory (``hydra.sweep.dir``).
    :returns: the jobs, numbered directories in numeric order first, then any others by name.
    """
    job_dirs = [d for d in Path(sweep_dir).iterdir() if d.is_dir() and ((d / ".hydra").is_dir() or (d / "metrics.json").is_file())]
    job_dirs.sort(key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))
    return [_load_job(d) for d in job_dirs]


def comparison_rows(jobs: list[Job]) -> list[dict[str, Any]]:
    """One row per job, preceded by one row for the baseline (taken from the first job with metrics).

    Figures of job rows are ``eval/<algo>/<figure>`` with their ``_se``, the win rate with
    ``win_rate_low`` / ``win_rate_high``, ``perplexity`` and ``time/total_seconds``. A missing
    figure is ``None``. ``status`` is ``"baseline"``, ``"ok"`` or one of :data:`UNFINISHED` (no
    metrics.json), with its ``reason``.

    :param jobs: the sweep's jobs, in the order the rows should take.
    :returns: dicts with exactly the keys in :data:`COLUMNS`.
    """
    rows = []
    baseline, sources = _baseline_figures(jobs)
    if sources:
        # The baseline is not compared with itself, and its time is part of every job's total.
        baseline.update({f"{rate}{end}": None for rate in WIN_RATES for end in ("", "_low", "_high")}, wall_time_s=None)
        of = f"job {sources[0]}" if len(sources) == 1 else f"jobs {', '.join(sources)}"
        rows.append({"job": None, "label": f"{BASELINE} (baseline of {of})", "algo": BASELINE, "status": "baseline",
                     "reason": None, "ignored": None, **baseline})
    # Settings every job shares (a cache directory, a shortened trainer) say nothing about the difference.
    shared = set.intersection(*(set(job.overrides) for job in jobs)) if len(jobs) > 1 else set()
    for job in jobs:
        ignored = {o for o, _ in job.ignored}
        label = " ".join(short_override(o) for o in job.overrides if o not in shared and o not in ignored) or job.variant or job.algo or job.number
        row = {"job": job.number, "label": label, "algo": job.variant or job.algo, "status": job.status, "reason": job.reason,
               "ignored": "; ".join(f"{short_override(o)}: {why}" for o, why in job.ignored) or None}
        figures = _figures(job.metrics or {}, job.algo or "")
        figures["wall_time_s"] = _number((job.metrics or {}).get("time/total_seconds"))
        rows.append({**row, **figures})
    return rows


def _baseline_figures(jobs: list[Job]) -> tuple[dict[str, float | None], list[str]]:
    """The baseline's figures, each from the first job that has it, and those jobs' numbers.

    Every job evaluates the same SFT policy on the same prompts and seed, but only a job whose algorithm
    consumes a reward scores it with the reward model (a sweep over dpo and grpo: the proxy reward of sft
    comes from the grpo job)."""
    figures: dict[str, float | None] = {}
    sources: list[str] = []
    for job in jobs:
        if job.metrics is None or not any(key.startswith(f"eval/{BASELINE}/") for key in job.metrics):
            continue
        found = _figures(job.metrics, BASELINE)
        added = [key for key, value in found.items() if value is not None and figures.get(key) is None]
        if not sources or added:
            for key, value in found.items():
                if figures.get(key) is None:
                    figures[key] = value
            sources.append(str(job.number))
    return figures, sources


def short_override(override: str) -> str:
    """``key=value`` with a path value cut to its last part (``feedback.path=/data/hh/test.jsonl`` ->
    ``feedback.path=test.jsonl``): a label tells jobs apart, it need not say where their files are."""
    key, sep, value = override.partition("=")
    if sep and ("/" in value or "\\" in value) and not value.startswith("[") and not value.startswith("{"):
        value = Path(value.rstrip("/\\")).name or value
    return f"{key}{sep}{value}"


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows as a Markdown table; ``-`` marks a missing figure; a job that did not finish
    says how it ended and why in place of its figures.

    :param rows: rows from :func:`comparison_rows`.
    :param path: the file to write.
    """
    columns = [  # (heading, cell of a finished row); a column no row has a figure in is left out
        ("gold reward ± SE", lambda row: _with_se(row["gold_reward"], row["gold_reward_se"], 3)),
        ("proxy reward ± SE", lambda row: _with_se(row["proxy_reward"], row["proxy_reward_se"], 3)),
        ("held-out preference accuracy ± SE", lambda row: _with_se(row["pref_accuracy"], row["pref_accuracy_se"], 3)),
        ("KL (nats) ± SE", lambda row: _with_se(row["kl"], row["kl_se"], 3)),
        *((f"{WIN_RATE_HEADINGS[rate]} vs {BASELINE} [low, high]", _interval_cell(rate)) for rate in WIN_RATES),
        ("response length (tokens) ± SE", lambda row: _with_se(row["response_length"], row["response_length_se"], 2)),
        ("perplexity", lambda row: _with_se(row["perplexity"], None, 2)),
        ("wall time (s)", lambda row: _with_se(row["wall_time_s"], None, 1)),
    ]
    finished = [row for row in rows if row["status"] not in UNFINISHED]
    columns = [(heading, cell) for heading, cell in columns if any(cell(row) != "-" for row in finished)]
    columns = columns or [("figures", lambda row: "-")]  # every job unfinished: the status still gets its cell
    header = ["job", "label", "algo", *(heading for heading, _ in columns)]
    lines = [
        "# Sweep comparison",
        "",
        "Held-out evaluation of every job; ± is one standard error over evaluation prompts (held-out preference",
        f"records for the preference accuracy: each policy's implicit reward against its reference, {BASELINE}'s against",
        "the starting model); intervals are 95% bootstrap intervals.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in rows:
        if row["status"] in UNFINISHED:
            figures = [f"**{row['status']}**" + (f": {row['reason']}" if row["reason"] else "")] + ["-"] * (len(columns) - 1)
        else:
            figures = [cell(row) for _, cell in columns]
        cells = ["-" if row["job"] is None else row["job"], row["label"], row["algo"] or "-", *figures]
        # A "|" inside an override would otherwise split the cell.
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    notes = [f"- job {row['job']} ignored {row['ignored']}" for row in rows if row["ignored"]]
    if notes:
        lines += ["", "Overrides a job did not use (the sweep crosses algorithms that read different settings):", *notes]
    write_atomic(path, ("\n".join(lines) + "\n").encode())


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows as CSV with the columns in :data:`COLUMNS`; a missing figure is an empty cell.

    Empty rather than ``-`` so that spreadsheet and dataframe readers see numbers and NaN.

    :param rows: rows from :func:`comparison_rows`.
    :param path: the file to write.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row[key] is None else row[key] for key in COLUMNS})
    write_atomic(path, buffer.getvalue().encode())


def write_comparison(sweep_dir: Path) -> list[Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``overoptimisation.png`` into ``sweep_dir``.

    The plot is skipped with a warning when matplotlib is missing; the tables are still written.

    :param sweep_dir: the sweep directory.
    :returns: the files written.
    """
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir) if sweep_dir.is_dir() else []
    if not jobs:
        log.warning("no job directories under %s; no sweep comparison written", sweep_dir)
        return []
    rows = comparison_rows(jobs)
    written = [sweep_dir / "comparison.md", sweep_dir / "comparison.csv"]
    write_markdown(rows, written[0])
    write_csv(rows, written[1])
    try:
        from rlhf_lab.sweep_plot import plot_overoptimisation

        plot_overoptimisation(rows, sweep_dir / "overoptimisation.png")
        written.append(sweep_dir / "overoptimisation.png")
    except ImportError as exc:
        log.warning("matplotlib is not available (%s); overoptimisation.png not drawn", exc)
    failed = [f"job {job.number} ({job.label}): {job.status}" for job in jobs if job.metrics is None]
    if failed:
        log.warning("%d job(s) did not finish: %s", len(failed), "; ".join(failed))
    log.info("sweep comparison of %d job(s) written to %s", len(jobs), ", ".join(str(p) for p in written))
    return written


class ComparisonCallback(Callback):
    """Hydra callback that writes the sweep comparison (:func:`write_comparison`).

    It refreshes the comparison after every job of a multirun as well as at its end, because
    Hydra's basic sweeper re-raises a failed job's exception before ``on_multirun_end`` runs.
    """

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        """Refresh the comparison after a job of a multirun; single runs are left alone.

        :param config: the job's config, including the ``hydra`` node.
        :param job_return: Hydra's record of the job (unused: its directory tells all).
        """
        if config.hydra.mode == RunMode.MULTIRUN:
            write_comparison(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Write the comparison once every job has returned, and print it: one table, a row per job
        labelled by its overrides (the jobs themselves print no table of their own).

        :param config: the sweep's config, including the ``hydra`` node.
        """
        sweep_dir = Path(config.hydra.sweep.dir)
        written = write_comparison(sweep_dir)
        if written:
            print(written[0].read_text(), end="", flush=True)
        rows = comparison_rows(load_jobs(sweep_dir)) if sweep_dir.is_dir() else []
        SWEEP_FAILURES[:] = [f"job {r['job']} ({r['label']}): {r['status']}: {r['reason']}" for r in rows if r["status"] in UNFINISHED]


def main(argv: list[str] | None = None) -> None:
    """``python -m rlhf_lab.sweep SWEEP_DIR``: write the comparison of a finished or aborted sweep.

    :param argv: command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="python -m rlhf_lab.sweep", description="Write comparison.md/.csv and overoptimisation.png for a sweep directory.")
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not write_comparison(args.sweep_dir):
        raise SystemExit(1)


def _load_job(job_dir: Path) -> Job:
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml") or []
    config = _read_yaml(job_dir / ".hydra" / "config.yaml") or {}
    metrics = None
    if (job_dir / "metrics.json").is_file():
        try:
            metrics = json.loads((job_dir / "metrics.json").read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); the job is listed as failed", job_dir / "metrics.json", exc)
    algo = (config.get("algo") or {}).get("name") if isinstance(config, dict) else None
    algo = algo or _algo_from_overrides(overrides) or _algo_from_metrics(metrics)
    hydra = _read_yaml(job_dir / ".hydra" / "hydra.yaml") or {}
    choice = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices", {}).get("algo") if isinstance(hydra, dict) else None
    variant = choice if isinstance(choice, str) and choice != algo else None
    status, reason = "ok", None
    if metrics is None:
        recorded = _read_status(job_dir / JOB_STATUS)
        status = recorded.get("status") if recorded.get("status") in UNFINISHED else "failed"
        reason = str(recorded.get("reason") or "it left no metrics.json (killed, or still running)")
    return Job(number=job_dir.name, overrides=tuple(str(o) for o in overrides), algo=algo, metrics=metrics, status=status, reason=reason,
               variant=variant, ignored=_read_ignored(job_dir / IGNORED_OVERRIDES))


def _read_ignored(path: Path) -> tuple[tuple[str, str], ...]:
    if not path.is_file():
        return ()
    try:
        entries = json.loads(path.read_text())
        return tuple((str(e["override"]), str(e["why"])) for e in entries)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s is unreadable (%s)", path, exc)
        return ()


def _read_status(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s)", path, exc)
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        log.warning("%s is not valid YAML (%s); ignoring it", path, exc)
        return None


def _algo_from_overrides(overrides: list) -> str | None:
    for override in overrides:
        key, _, value = str(override).lstrip("+~").partition("=")
        if key == "algo" and value:
            return value
    return None


def _algo_from_metrics(metrics: dict | None) -> str | None:
    # Without a config, the one evaluated policy that is not the baseline is the algorithm.
    names = {key.split("/")[1] for key in (metrics or {}) if key.startswith("eval/") and key.count("/") >= 2}
    names.discard(BASELINE)
    return names.pop() if len(names) == 1 else None


def _figures(metrics: dict, policy: str) -> dict[str, float | None]:
    figures: dict[str, float | None] = {}
    for name in FIGURES_WITH_SE:
        figures[name] = _number(metrics.get(f"eval/{policy}/{name}"))
        figures[f"{name}_se"] = _number(metrics.get(f"eval/{policy}/{name}_se"))
    for name in (*(f"{rate}{end}" for rate in WIN_RATES for end in ("", "_low", "_high")), "perplexity"):
        figures[name] = _number(metrics.get(f"eval/{policy}/{name}"))
    return figures


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _with_se(value: float | None, se: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if se is None else f"{value:.{digits}f} ± {se:.{digits}f}"


WIN_RATE_HEADINGS = {
    "win_rate": "win rate", "proxy_win_rate": "reward-model win rate", "proxy_lc_win_rate": "reward-model LC win rate",
    "judge_win_rate": "judge win rate", "judge_lc_win_rate": "judge LC win rate",
}


def _interval_cell(rate: str):
    return lambda row: _with_interval(row[rate], row[f"{rate}_low"], row[f"{rate}_high"])


def _with_interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if low is None or high is None else f"{value:.3f} [{low:.3f}, {high:.3f}]"


if __name__ == "__main__":
    main()
