"""Load on the labelling app: N concurrent labellers over loopback, each labelling M items.

Serves a campaign of two-response items with uvicorn (as ``feedback=human`` does), runs one thread and
one keep-alive connection per labeller (``rlhf_lab.labelling.client.run_load``; every tenth label is
sent twice, as a client retry would), and prints labels/s and the latency quantiles of one
(next item + label) round trip. Each label is committed to SQLite (WAL, synchronous=FULL) before it
is acknowledged, so the figures include the disk's fsync.

    python benchmarks/labelling_load.py                       # 20 labellers x 100 labels
    python benchmarks/labelling_load.py --labellers 50 --labels 200

Nothing is asserted; the figures are printed. tests/test_labelling_server.py checks the same load for
correctness (every acknowledged label stored exactly once).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rlhf_lab.labelling.campaign import Campaign, CampaignSettings
from rlhf_lab.labelling.client import run_load
from rlhf_lab.labelling.server import LabelServer
from rlhf_lab.labelling.store import LabelStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labellers", type=int, default=20)
    parser.add_argument("--labels", type=int, default=100, help="labels per labeller")
    parser.add_argument("--redundancy", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = LabelStore(Path(tmp) / "labels.db")
        campaign = Campaign(store, "bench", CampaignSettings(redundancy=args.redundancy))
        tokens = {f"l{i}": store.add_labeller("bench", f"l{i}") for i in range(args.labellers)}
        words = " ".join(["a response of some length"] * 8)
        n_items = args.labellers * args.labels // args.redundancy + args.labellers
        store.add_items("bench", "b", [{"prompt": f"prompt {i}", "responses": [f"A {words} {i}", f"B {words} {i}"]} for i in range(n_items)])
        with LabelServer(campaign) as server:
            result = run_load(server.url, tokens, labels_each=args.labels)
        stored = store.count_labels("bench")
    ms = {q: 1000 * result.latency_quantile(q) for q in (0.5, 0.9, 0.99)}
    print(f"{args.labellers} labellers x {args.labels} labels, redundancy {args.redundancy}")
    print(f"acknowledged {len(result.acknowledged)}, stored {stored}, errors {len(result.errors)}")
    print(f"{result.labels_per_second:.0f} labels/s; latency of next+label: p50 {ms[0.5]:.0f} ms, p90 {ms[0.9]:.0f} ms, p99 {ms[0.99]:.0f} ms")


if __name__ == "__main__":
    main()
