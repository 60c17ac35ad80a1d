"""The sweep's tables: one row per job (and the SFT baseline), as Markdown and CSV.

Kept apart from :mod:`rlhf_lab.sweep` (which finds the jobs and runs the callback), as the plot is
(:mod:`rlhf_lab.sweep_plot`): rows are plain dicts with the keys in :data:`COLUMNS`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_lab.files import write_atomic

BASELINE = "sft"
FIGURES_WITH_SE = ("gold_reward", "proxy_reward", "pref_accuracy", "kl", "response_length")
WIN_RATES = ("win_rate", "proxy_win_rate", "proxy_lc_win_rate", "judge_win_rate", "judge_lc_win_rate")
"""Win rates against the baseline (by gold reward, the reward model, an AI judge; raw and length-controlled),
each a column with its ``_low`` and ``_high``."""
COLUMNS = (
    "job", "label", "algo", "status",
    "gold_reward", "gold_reward_se", "proxy_reward", "proxy_reward_se", "pref_accuracy", "pref_accuracy_se", "kl", "kl_se",
    *(f"{rate}{end}" for rate in WIN_RATES for end in ("", "_low", "_high")),
    "response_length", "response_length_se", "perplexity", "wall_time_s",
    "gold_reward_diff", "gold_reward_diff_se", "proxy_reward_diff", "proxy_reward_diff_se", "reason", "ignored",
)
"""Keys of every row from :func:`comparison_rows`, and the columns of ``comparison.csv``."""
UNFINISHED = ("refused", "crashed", "stopped", "failed")
"""Statuses of a job that left no metrics: a setting refused, an error, a stop signal, or unknown."""

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
    :param ignored: the sweep's overrides this job did not use, with why (:data:`rlhf_lab.sweep.IGNORED_OVERRIDES`).
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
    fits = overoptimisation_lines(rows)
    if fits:
        lines += ["", "Over-optimisation (Gao et al. 2022: gain over sft against d = sqrt(KL); best-of-n d(a - b d), "
                  "RL d(a - b log d); peak interval: parametric bootstrap over each job's paired SE):", *fits]
    write_atomic(path, ("\n".join(lines) + "\n").encode())


MIN_FIT_JOBS = 3
"""Finished jobs of one algorithm, at different KLs, that an over-optimisation fit needs."""


def overoptimisation_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (algorithm, reward) with at least :data:`MIN_FIT_JOBS` finished jobs: the fitted
    coefficients and the KL at which that reward's gain peaks, with its interval, or that it does not turn."""
    from rlhf_lab.overoptimisation import fit_overoptimisation

    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok" and row["kl"] is not None:
            groups.setdefault(row["algo"], []).append(row)
    lines = []
    for algo, members in groups.items():
        form = "best_of_n" if algo == "best_of_n" else "rl"
        for reward in ("gold_reward", "proxy_reward"):
            points = [r for r in members if r[f"{reward}_diff"] is not None]
            if len(points) < MIN_FIT_JOBS or len({r["kl"] for r in points}) < 2:
                continue
            fit = fit_overoptimisation([max(r["kl"], 0.0) for r in points], [r[f"{reward}_diff"] for r in points],
                                       [r[f"{reward}_diff_se"] or 0.0 for r in points], form)
            where = (f"peaks at KL {fit.peak_kl:.2f}" + (f" [{fit.peak_low:.2f}, {fit.peak_high:.2f}]" if fit.peak_low is not None else "")
                     if fit.peak_kl is not None else "does not turn within the fitted form (b <= 0): still rising")
            measured = max(r["kl"] for r in points)
            if fit.peak_kl is not None and fit.peak_kl > measured:
                where += f", beyond the largest KL measured ({measured:.2f}): an extrapolation"
            lines.append(f"- {algo}, {reward.replace('_', ' ')} ({len(points)} jobs): a = {fit.alpha:.3f}, b = {fit.beta:.3f}; {where}"
                         f" ({fit.turned:.0%} of refits turn)")
    return lines


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


def _figures(metrics: dict, policy: str) -> dict[str, float | None]:
    figures: dict[str, float | None] = {}
    for name in (*FIGURES_WITH_SE, "gold_reward_diff", "proxy_reward_diff"):
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
