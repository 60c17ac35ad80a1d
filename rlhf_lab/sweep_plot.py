"""The sweep's plot: reward against KL to the SFT policy, one point per job (``overoptimisation.png``).

Kept apart from :mod:`rlhf_lab.sweep` (which reads the jobs and writes the tables) because only it
needs matplotlib, an optional dependency: the tables are written without it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rlhf_lab.files import write_atomic


def plot_overoptimisation(rows: list[dict[str, Any]], path: Path) -> None:
    """Scatter gold and proxy reward against KL from the baseline, one colour per run.

    Circles are gold reward, squares proxy reward; error bars are one standard error on both axes.
    The baseline sits at KL 0 by definition. Failed jobs and runs without KL are left out.

    :param rows: rows from :func:`comparison_rows`.
    :param path: the PNG file to write.
    :raises ImportError: when matplotlib is not installed.
    """
    # Imported here so the callback costs nothing in single runs; the Agg canvas draws
    # off-screen without touching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    figure = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    plotted = 0
    for index, row in enumerate(r for r in rows if r["status"] != "failed"):
        kl, kl_se = (0.0, None) if row["status"] == "baseline" else (row["kl"], row["kl_se"])
        if kl is None:
            continue
        colour = f"C{index % 10}"
        for figure_name, marker in (("gold_reward", "o"), ("proxy_reward", "s")):
            value = row[figure_name]
            if value is None:
                continue
            axes.errorbar(
                kl, value, xerr=kl_se, yerr=row[f"{figure_name}_se"], fmt=marker, color=colour,
                markerfacecolor=colour if marker == "o" else "white", capsize=3, markersize=7,
            )
            if marker == "o" or row["gold_reward"] is None:  # one label per run
                axes.annotate(row["label"], (kl, value), textcoords="offset points", xytext=(6, 4), fontsize=8, color=colour)
            plotted += 1
    if plotted == 0:
        axes.text(0.5, 0.5, "no finished run reported KL and a reward", ha="center", va="center", transform=axes.transAxes)
    axes.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_title("Gold and proxy reward against KL to sft")
    axes.set_xlabel("KL(policy ‖ sft) on held-out prompts [nats per response]")
    axes.set_ylabel("reward per response\n(gold: task utility; proxy: reward function)")
    axes.legend(
        handles=[
            Line2D([], [], marker="o", linestyle="", color="black", label="gold reward (± SE)"),
            Line2D([], [], marker="s", linestyle="", color="black", markerfacecolor="white", label="proxy reward (± SE)"),
        ],
        loc="best",
    )
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
