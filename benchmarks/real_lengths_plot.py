"""Time per sample against model size and sequence length, from the figures real_lengths.py writes.

    python benchmarks/real_lengths.py --shapes 1m,25m,125m --what sft --positions 128,256,512 --steps 2 --trl padded --json sft.json
    python benchmarks/real_lengths_plot.py sft.json --out time_per_sample.png

Left: seconds per sample against parameters (log-log) at the longest length measured, one line per
trainer and side. Right: seconds per sample against the length records are cut to, one line per shape,
trainer and side. rlhf_lab's rows are its defaults; TRL's are its fastest configuration measured (the
lowest time among its rows for that shape, trainer and length). Several JSON files are merged.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def series(rows: list[dict]) -> dict[tuple[str, str], dict[tuple[int, int, str], float]]:
    """(trainer, side) -> {(parameters, positions, shape): seconds per sample}; TRL's fastest row kept."""
    out: dict = defaultdict(dict)
    for row in rows:
        if "failed" in row or not row.get("samples_per_s"):
            continue
        side = "TRL" if row["variant"].startswith("TRL") else "rlhf_lab" if row["variant"] == "defaults" else None
        if side is None:
            continue
        key, seconds = (row["parameters"], row["positions"], row["shape"]), 1 / row["samples_per_s"]
        points = out[(row["what"], side)]
        points[key] = min(points.get(key, seconds), seconds)
    return out


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(rows)
    fig, (by_size, by_length) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"rlhf_lab": "-", "TRL": "--"}  # one colour per trainer (left) or shape (right); TRL dashed
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    shapes = sorted({shape for points in data.values() for _, _, shape in points}, key=lambda sh: min(
        n for points in data.values() for n, _, s in points if s == sh))
    trainers = sorted({what for what, _ in data})
    for (what, side), points in sorted(data.items()):
        longest = max(p for _, p, _ in points)
        sized = sorted((n, s) for (n, p, _), s in points.items() if p == longest)
        if sized:
            by_size.plot([n for n, _ in sized], [s for _, s in sized], styles[side], marker="o", color=palette[trainers.index(what) % len(palette)],
                         label=f"{what}, {side} ({longest} positions)")
        for shape in shapes:
            lengths = sorted((p, s) for (_, p, sh), s in points.items() if sh == shape)
            if len(lengths) > 1:
                by_length.plot([p for p, _ in lengths], [s for _, s in lengths], styles[side], marker="o",
                               color=palette[(shapes.index(shape) + len(trainers) * trainers.index(what)) % len(palette)], label=f"{what} {shape}, {side}")
    by_size.set(xscale="log", yscale="log", xlabel="parameters", ylabel="seconds per sample", title="time per sample against model size")
    by_length.set(xscale="log", yscale="log", xlabel="positions (records cut to)", ylabel="seconds per sample",
                  title="time per sample against sequence length")
    for axes in (by_size, by_length):
        axes.grid(True, which="both", alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="JSON files written by real_lengths.py --json")
    parser.add_argument("--out", default="time_per_sample.png", help="the PNG to write")
    args = parser.parse_args()
    rows = [row for path in args.results for row in json.loads(Path(path).read_text())["rows"]]
    plot(rows, Path(args.out))
    for (what, side), points in sorted(series(rows).items()):
        cells = ", ".join(f"{shape}@{p}: {s:.3f}" for (_, p, shape), s in sorted(points.items()))
        print(f"{what:7s} {side:9s} seconds per sample: {cells}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
