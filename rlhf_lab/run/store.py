"""The store: how a stage's artifact is cached, locked, checksummed and resumed, by one process or several.

The content-addressed cache (:mod:`rlhf_lab.cache`) keeps the four guarantees (one build per key,
atomic publish, verified reuse, no orphans); the in-progress index (:class:`rlhf_lab.resume.InProgressIndex`)
knows which checkpoint an interrupted build resumes from. With several processes, rank 0 alone takes
the lock, builds and publishes, and tells the other ranks what it decided (:class:`rlhf_lab.distributed.Ranks`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from rlhf_lab.cache import ArtifactCache


@dataclass
class Artifact:
    """A stage's output: its directory, its cache key and the figures it produced."""

    path: Path
    key: str
    metrics: dict = field(default_factory=dict)


def file_digests(config: dict, skip: tuple = ()) -> dict:
    """SHA-256 of every config value that names an existing file, for a cache key: edited data
    invalidates the artifact. ``skip``: keys naming files that are not inputs (a label database, which
    grows as people label)."""
    digests = {}
    for name, value in config.items():
        if name not in skip and isinstance(value, str) and Path(value).is_file():
            digests[name] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return digests


class Store:
    """The run's view of the artifact cache.

    :param root: ``cache_dir``.
    :param ranks: the run's processes (:class:`rlhf_lab.distributed.Ranks`).
    """

    def __init__(self, root: Path, ranks) -> None:
        from rlhf_lab.resume import InProgressIndex  # (resume.py imports torch; the plan reads this module's Artifact)

        self.cache = ArtifactCache(Path(root))
        self.inprogress = InProgressIndex(Path(root))
        self.ranks = ranks

    def cached(self, stage: str, key: str, build: Callable[[Optional[Path]], dict], collective: bool = False) -> Artifact:
        """The artifact ``key`` of ``stage`` from the cache, built by ``build(out_dir) -> metrics`` if missing.

        With several processes, rank 0 takes the lock, builds and publishes; it tells the others
        whether it builds, and where the artifact is once published. A ``collective`` build trains
        (all ranks must join its ``Trainer.fit``): the others run it too, with ``out=None``, and
        return after the fit; a build that does not train is rank 0's alone.
        """
        ranks = self.ranks
        if not ranks.is_main:
            if ranks.hear(f"start:{stage}:{key}") == "build" and collective:
                build(None)
            path = Path(ranks.hear(f"done:{stage}:{key}"))
            return Artifact(path, key, json.loads((path / "metrics.json").read_text()))
        announced = []

        def build_announced(out: Path) -> dict:
            ranks.tell(f"start:{stage}:{key}", "build")
            announced.append(True)
            return build(out)

        path, metrics = self.cache.get_or_build(stage, key, build_announced)
        if not announced:
            ranks.tell(f"start:{stage}:{key}", "reused")
        ranks.tell(f"done:{stage}:{key}", str(path))
        self.inprogress.clear(stage, key)  # built: its checkpoint is no longer a place to resume from
        return Artifact(path, key, metrics)

    def resume_point(self, stage: str, artifact: str, key: str) -> Optional[Path]:
        """The checkpoint an interrupted build of ``artifact`` ``key`` left (rank 0's choice, on every rank)."""
        found = self.ranks.share(f"resume:{stage}:{key}", lambda: str(self.inprogress.checkpoint(artifact, key) or ""))
        return Path(found) if found else None

    def record_checkpoint(self, artifact: str, key: str, path: Path) -> None:
        """A checkpoint the build of ``artifact`` ``key`` saved: the same command started again resumes there."""
        self.inprogress.record(artifact, key, path)
