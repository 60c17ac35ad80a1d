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

    def get_or_build(self, stage: str, key: str, build: Callable[[Path], dict]) -> tuple[Path, dict, bool]:
        """Return ``(directory, metrics, was_cached)``; ``build(tmp_dir) -> metrics`` runs only on a miss."""
        final = self.path(stage, key)
        if (final / COMPLETE_MARKER).is_file():
            log.info("%s: reusing cached artifact %s (key %s)", stage, final, key)
            return final, json.loads((final / "metrics.json").read_text()), True
        log.info("%s: no cached artifact for key %s, building it", stage, key)
        tmp = final.parent / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            metrics = build(tmp)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            (tmp / COMPLETE_MARKER).write_text(key + "\n")
            if final.exists():  # an incomplete leftover from a crashed run
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final, metrics, False
