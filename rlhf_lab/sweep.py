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
import json
import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from rlhf_lab.files import write_atomic
from rlhf_lab.sweep_tables import BASELINE, UNFINISHED, Job, comparison_rows, write_csv, write_markdown

log = logging.getLogger("rlhf_lab.sweep")

JOB_STATUS = "job_status.json"
"""Written into a job's directory by a job that ends without finishing: its status and reason."""
IGNORED_OVERRIDES = "ignored_overrides.json"
"""Written into a job's directory by a job that ignores overrides of the sweep it does not use (a
sweep over dpo and grpo with feedback.path: grpo reads no preferences), each with why."""
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


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` (one holding ``.hydra/`` or ``metrics.json``).

    :param sweep_dir: the sweep directory (``hydra.sweep.dir``).
    :returns: the jobs, numbered directories in numeric order first, then any others by name.
    """
    job_dirs = [d for d in Path(sweep_dir).iterdir() if d.is_dir() and ((d / ".hydra").is_dir() or (d / "metrics.json").is_file())]
    job_dirs.sort(key=lambda d: (0, int(d.name), "") if d.name.isdigit() else (1, 0, d.name))
    return [_load_job(d) for d in job_dirs]


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


if __name__ == "__main__":
    main()
