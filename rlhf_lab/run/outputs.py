"""What a run leaves in its run directory: ``metrics.json``, ``paths.json``, ``samples.jsonl`` and the
published policy (``policy/``, with LoRA also ``policy_merged/``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Mapping

from rlhf_lab.errors import RlhfLabError, nonfinite_figures
from rlhf_lab.files import write_atomic
from rlhf_lab.run.store import Artifact

log = logging.getLogger(__name__)

PATHS_FILE = "paths.json"
"""Written into the run directory: where the run directory, each artifact and the policy are."""

ARTIFACT_FILES = ("metrics.json", "ARTIFACT_COMPLETE")
"""The cache's own files in an artifact directory, left out of a published copy."""


def artifact_figures(artifacts: Mapping[str, object]) -> dict:
    """The figures every disk artifact of the run produced (cached ones included)."""
    figures = {}
    for artifact in artifacts.values():
        if isinstance(artifact, Artifact):
            figures.update(artifact.metrics)
    return figures


def write_metrics(run_dir: Path, metrics: dict) -> None:
    """``metrics.json``, only if every figure is a finite number: a NaN or infinite figure fails the
    run, naming the figures (they go to ``metrics.nonfinite.json``, the other outputs stay)."""
    bad = nonfinite_figures(metrics)
    if bad:
        write_atomic(run_dir / "metrics.nonfinite.json", json.dumps({k: str(v) for k, v in metrics.items()}, indent=2, sort_keys=True) + "\n")
        raise RlhfLabError(
            f"the run produced {len(bad)} figure(s) that are not finite numbers: {', '.join(bad[:8])}; no metrics.json was written "
            f"(every figure is in {run_dir / 'metrics.nonfinite.json'}; the policy and samples are kept in {run_dir})"
        )
    write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def write_samples(run_dir: Path, samples: list) -> None:
    """``samples.jsonl``: every evaluated response of every policy, one per line."""
    write_atomic(run_dir / "samples.jsonl", "".join(json.dumps(sample) + "\n" for sample in samples))


def _link_or_copy(source: str, target: str) -> None:
    # Artifacts are never written after they are published, so a hard link is a safe copy (and the
    # cache's checksums would catch an edit); across file systems it is a copy.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def publish_policy(run_dir: Path, artifact: Artifact) -> Path:
    """The trained policy's artifact published as ``<run dir>/policy`` (a fresh directory, then renamed:
    no stale shards of an earlier run mix in)."""
    out, tmp = run_dir / "policy", run_dir / ".policy.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(artifact.path, tmp, ignore=shutil.ignore_patterns(*ARTIFACT_FILES), copy_function=_link_or_copy)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def write_merged_policy(run_dir: Path, model, tokenizer) -> None:
    """With ``model.lora.merge=true``: the adapters merged into the weights, as ``<run dir>/policy_merged``."""
    from rlhf_lab.models.lora import merged_copy

    merged = merged_copy(model)
    merged.save_pretrained(run_dir / "policy_merged")
    tokenizer.save_pretrained(run_dir / "policy_merged")


def artifact_paths(run_dir: Path, artifacts: Mapping[str, object]) -> dict[str, str]:
    """Where this run's outputs are: the run directory, every disk artifact built, the policy."""
    paths = {"run_dir": str(run_dir.resolve())}
    for name in ("sft", "preferences", "reward_model"):
        if isinstance(artifacts.get(name), Artifact):
            paths[name] = str(Path(artifacts[name].path).resolve())
    for name in ("policy", "policy_merged"):
        if (run_dir / name).is_dir():
            paths[name] = str((run_dir / name).resolve())
    return paths


def write_paths(run_dir: Path, artifacts: Mapping[str, object]) -> None:
    """``paths.json`` in the run directory, and the same lines in the log: the next command takes them."""
    paths = artifact_paths(run_dir, artifacts)
    write_atomic(run_dir / PATHS_FILE, json.dumps(paths, indent=2) + "\n")
    for name, path in paths.items():
        log.info("%s: %s", name, path)
