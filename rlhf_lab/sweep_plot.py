"""The sweep's plot: reward and held-out preference accuracy against KL to the SFT policy, one point per
job (``overoptimisation.png``).

Kept apart from :mod:`rlhf_lab.sweep` (which reads the jobs and writes the tables) because only it
needs matplotlib, an optional dependency: the tables are written without it.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

from rlhf_lab.files import write_atomic


PANELS = (
    ("Reward against KL to sft", "reward per response\n(gold: task utility; proxy: reward function)",
     (("gold_reward", "o", "gold reward (± SE)"), ("proxy_reward", "s", "proxy reward (± SE)"))),
    ("Held-out preferences against KL to sft", "preference accuracy of the implicit reward\n(sft: against the starting model)",
     (("pref_accuracy", "D", "held-out preference accuracy (± SE)"),)),
)
"""(title, y label, (figure, marker, legend text) ...) of each panel; a panel is drawn when a job has its figures."""


def plot_overoptimisation(rows: list[dict[str, Any]], path: Path) -> dict[str, list[str]]:
    """Every finished job and the baseline against their KL from the baseline, one colour per job.

    Left, gold and proxy reward (where the task has a gold utility or the run a reward function); right,
    held-out preference accuracy (where the run collected preferences), with chance at 0.5. The baseline
    sits at KL 0. Each point is marked with its job number inside the axes; the key below the panels
    gives each number's label. Error bars are one standard error on both axes. Jobs without KL, or
    without any figure drawn, are named under the key.

    :param rows: rows from :func:`comparison_rows`.
    :param path: the PNG file to write.
    :returns: each drawn panel's title and the marks of its points (``sft``, job numbers), in drawing order.
    :raises ImportError: when matplotlib is not installed.
    """
    # Imported here so the callback costs nothing in single runs; the Agg canvas draws
    # off-screen without touching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finished = [row for row in rows if row["status"] in ("baseline", "ok")]
    unfinished = [f"{row['job']} ({row['status']})" for row in rows if row["status"] not in ("baseline", "ok")]
    panels = [panel for panel in PANELS if any(_kl(row)[0] is not None and row[name] is not None for row in finished for name, _, _ in panel[2])]
    figure = Figure(figsize=(6.4 * max(len(panels), 1), 5.2), dpi=120)
    FigureCanvasAgg(figure)
    drawn: set[int] = set()
    marks: dict[str, list[str]] = {}
    if not panels:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "no finished job reported KL and a reward or preference figure", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
    for number, (title, ylabel, figures) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), number)
        panel = _draw_panel(axes, finished, figures)
        drawn |= panel
        marks[title] = [_mark(finished[index]) for index in sorted(panel)]
        if figures[0][0] == "pref_accuracy":
            axes.axhline(0.5, color="grey", linewidth=0.8, linestyle="--", label="chance")
        axes.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
        axes.set_title(title)
        axes.set_xlabel("KL(policy ‖ sft) on held-out prompts [nats per response]")
        axes.set_ylabel(ylabel)
        axes.margins(0.15)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize=8)  # only what this panel drew
    _key(figure, finished, drawn, unfinished)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return marks


def _kl(row: dict) -> tuple[float | None, float | None]:
    return (0.0, None) if row["status"] == "baseline" else (row["kl"], row["kl_se"])


def _mark(row: dict) -> str:
    return "sft" if row["status"] == "baseline" else str(row["job"])


def _draw_panel(axes, rows: list[dict], figures) -> set[int]:
    """Each row's figures of this panel at its KL; returns the indices of the rows drawn."""
    drawn, labelled = set(), set()
    for index, row in enumerate(rows):
        kl, kl_se = _kl(row)
        if kl is None:
            continue
        colour = f"C{index % 10}"
        for name, marker, text in figures:
            if row[name] is None:
                continue
            axes.errorbar(kl, row[name], xerr=kl_se, yerr=row[f"{name}_se"], fmt=marker, color=colour, capsize=3, markersize=7,
                          markerfacecolor=colour if marker != "s" else "white")
            labelled.add((marker, text))
            # The job number beside the point, kept inside the axes (a long label belongs in the key).
            axes.annotate(_mark(row), (kl, row[name]), textcoords="offset points", xytext=(6, 4), fontsize=8, color=colour,
                          annotation_clip=True)
            drawn.add(index)
    # The legend names only the kinds of point drawn, in black: a colour means a job, not a figure.
    for marker, text in (pair for name, marker, text in figures for pair in [(marker, text)] if pair in labelled):
        axes.plot([], [], marker=marker, linestyle="", color="black", markerfacecolor="white" if marker == "s" else "black", label=text)
    return drawn


def _key(figure, rows: list[dict], drawn: set[int], unfinished: list[str]) -> None:
    """Below the panels: each drawn job's number and label in its colour, then the jobs not drawn."""
    lines = [(f"{_mark(row)}: {textwrap.shorten(str(row['label']), 90)}", f"C{index % 10}") for index, row in enumerate(rows) if index in drawn]
    missing = [_mark(row) for index, row in enumerate(rows) if index not in drawn]
    if missing:
        lines.append((f"not drawn (no KL, or none of these figures): {', '.join(missing)}", "black"))
    if unfinished:
        lines.append((f"did not finish (comparison.md says why): {', '.join(unfinished)}", "black"))
    for number, (text, colour) in enumerate(lines):
        figure.text(0.01, -0.02 - 0.035 * number, text, color=colour, fontsize=9, ha="left", va="top", transform=figure.transFigure)
