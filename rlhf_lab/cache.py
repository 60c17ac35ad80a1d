"""Content-addressed cache of stage artifacts.

An artifact is a directory (``save_pretrained`` output, records, ``metrics.json``) stored under
``<root>/<stage>/<key>``, where the key hashes the stage's own config and the keys of everything
upstream. A sweep that varies only the policy-optimisation settings therefore trains SFT and the
reward model once. Artifacts are built in a temporary directory and renamed into place, so a crash
never leaves a half-written artifact that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from rlhf_lab import __version__

log = logging.getLogger(__name__)

COMPLETE_MARKER = "ARTIFACT_COMPLETE"


def artifact_key(stage: str, config: Any, upstream: list[str]) -> str:
    """Hash of the stage name, its config (JSON, sorted keys), its upstream keys and the code version."""
    payload = json.dumps({"stage": stage, "config": config, "upstream": upstream, "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ArtifactCache:
    """Stage artifacts under ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get_or_build(self, stage: str, key: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
        """Return ``(directory, metrics)``; ``build(tmp_dir) -> metrics`` runs only on a miss.

        Another process may finish the same artifact first (two runs sharing a cache); its complete
        artifact is then kept and this build is discarded, never the other way round.
        """
        final = self.path(stage, key)
        if (final / COMPLETE_MARKER).is_file():
            log.info("%s: reusing cached artifact %s (key %s)", stage, final, key)
            return final, json.loads((final / "metrics.json").read_text())
        log.info("%s: no cached artifact for key %s, building it", stage, key)
        tmp = final.parent / f".{key}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            metrics = build(tmp)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            (tmp / COMPLETE_MARKER).write_text(key + "\n")
            self._publish(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final, json.loads((final / "metrics.json").read_text())

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        if (final / COMPLETE_MARKER).is_file():
            return  # someone else published first; theirs stays
        if final.exists():  # an incomplete leftover of a crashed run: move it aside, then drop it
            stale = final.parent / f".{final.name}.stale-{uuid.uuid4().hex}"
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / COMPLETE_MARKER).is_file():  # lost a race to a complete artifact: fine
                raise
