"""Content-addressed cache of stage artifacts.

An artifact is a directory (``save_pretrained`` output, records, ``metrics.json``) stored under
``<root>/<stage>/<key>``, where the key hashes the stage's own config and the keys of everything
upstream. A sweep that varies only the policy-optimisation settings therefore trains SFT and the
reward model once.

What makes it safe to share between runs, on one machine or on a shared filesystem:

- **One build per key.** A build holds an exclusive lock (``flock``; Linux serves it on NFS through
  the server's lock manager) on ``<root>/.locks/<stage>-<key>``; a second run wanting the same artifact waits,
  then finds it published and reuses it. Runs building different keys never wait on each other.
- **Atomic publish.** The artifact is built in a temporary directory and renamed into place, so a
  crash never leaves a half-written artifact that a later run would trust.
- **Verified reuse.** Publishing writes ``ARTIFACT_COMPLETE``: the key and the size and SHA-256 of
  every file. Reuse checks them all; an artifact that fails (a truncated weight file, an edited
  ``metrics.json``) is moved to ``<root>/corrupt/`` with a warning and built again.
- **No orphans.** A killed build leaves its temporary directory behind; the next build in that stage
  directory removes every temporary whose key nobody holds the lock for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from rlhf_lab import __version__
from rlhf_lab.errors import RlhfLabError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "ARTIFACT_COMPLETE"
"""Written last into a published artifact: its key and the size and SHA-256 of every other file."""

CORRUPT_DIR = "corrupt"
"""Where artifacts that fail verification are moved, under the cache root (kept for inspection)."""


def artifact_key(stage: str, config: Any, upstream: list[str]) -> str:
    """Hash of the stage name, its config (JSON, sorted keys), its upstream keys and the code version."""
    payload = json.dumps({"stage": stage, "config": config, "upstream": upstream, "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def manifest(directory: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file under ``directory`` except the marker."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != COMPLETE_MARKER:
            files[path.relative_to(directory).as_posix()] = [path.stat().st_size, _sha256(path)]
    return files


def verify(directory: Path, key: str) -> Optional[str]:
    """None if ``directory`` is the complete, intact artifact ``key``; else what is wrong with it."""
    try:
        recorded = json.loads((directory / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return f"{COMPLETE_MARKER} is unreadable or not JSON (an artifact of an older rlhf_lab, or damaged)"
    if not isinstance(recorded, dict) or recorded.get("key") != key or not isinstance(recorded.get("files"), dict):
        return f"{COMPLETE_MARKER} does not describe artifact {key}"
    for name, (size, digest) in recorded["files"].items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when it was published"
        if _sha256(path) != digest:
            return f"{name} does not match the checksum recorded when it was published"
    return None


@contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if absent); yields False if not ``blocking`` and taken."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except (BlockingIOError, PermissionError):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class ArtifactCache:
    """Stage artifacts under ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def check_writable(self) -> None:
        """Refuse, before any work, a cache root that cannot hold artifacts."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise RlhfLabError(f"cache_dir={self.root}: cannot write artifacts there ({exc.strerror or exc}); point cache_dir at a writable directory") from None

    def get_or_build(self, stage: str, key: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
        """Return ``(directory, metrics)``; ``build(tmp_dir) -> metrics`` runs only if no intact artifact exists.

        Concurrent callers for one key build it once: the others wait for the lock and reuse it.
        """
        final = self.path(stage, key)
        if (final / COMPLETE_MARKER).is_file() and self._intact(stage, key):
            log.info("%s: reusing cached artifact %s (key %s)", stage, final, key)
            return final, self._metrics(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        lock = self._lock_path(stage, key)
        with _locked(lock, blocking=False) as free:
            if free:
                return self._build_locked(stage, key, build)
        log.info("%s: another run is building artifact %s; waiting for it", stage, key)
        with _locked(lock):
            return self._build_locked(stage, key, build)

    def _build_locked(self, stage: str, key: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
        final = self.path(stage, key)
        if (final / COMPLETE_MARKER).is_file() and self._intact(stage, key):
            log.info("%s: reusing artifact %s, which another run has just built", stage, final)
            return final, self._metrics(final)
        self._clean_orphans(stage, key)
        log.info("%s: no cached artifact for key %s, building it", stage, key)
        tmp = final.parent / f".{key}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            metrics = build(tmp)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            (tmp / COMPLETE_MARKER).write_text(json.dumps({"key": key, "files": manifest(tmp)}, indent=1, sort_keys=True) + "\n")
            self._publish(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final, self._metrics(final)

    def _lock_path(self, stage: str, key: str) -> Path:
        # Beside the stage directories, not in them: a stage directory lists artifacts only.
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return locks / f"{stage}-{key}"

    @staticmethod
    def _metrics(final: Path) -> dict:
        return json.loads((final / "metrics.json").read_text())

    def _intact(self, stage: str, key: str) -> bool:
        """Verify a published artifact; move a damaged one aside (with a warning) so it is rebuilt."""
        final = self.path(stage, key)
        started = time.perf_counter()
        problem = verify(final, key)
        if problem is None:
            seconds = time.perf_counter() - started
            if seconds > 1.0:
                log.info("%s: verified the checksums of %s in %.1f s", stage, final, seconds)
            return True
        aside = self.root / CORRUPT_DIR / f"{stage}-{key}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(final, aside)
        except FileNotFoundError:  # another run moved it first
            return False
        log.warning("%s: cached artifact %s failed verification (%s); moved it to %s and building it again", stage, final, problem, aside)
        return False

    def _clean_orphans(self, stage: str, key: str) -> None:
        """Remove temporaries of killed builds: this key's (its lock is ours), and other keys' whose
        lock nobody holds (a running build holds its lock from before its temporary exists)."""
        stage_dir = self.root / stage
        for leftover in stage_dir.glob(".*.tmp-*"):
            owner = leftover.name[1:].split(".tmp-", 1)[0]
            if owner == key:
                shutil.rmtree(leftover, ignore_errors=True)
                continue
            with _locked(self._lock_path(stage, owner), blocking=False) as free:
                if free:
                    log.info("removing %s, left by a build that was killed", leftover)
                    shutil.rmtree(leftover, ignore_errors=True)
        for stale in stage_dir.glob(".*.stale-*"):
            shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        if (final / COMPLETE_MARKER).is_file():
            return  # published meanwhile by a run that did not take the lock (an older rlhf_lab): theirs stays
        if final.exists():  # an incomplete leftover of a crashed run: move it aside, then drop it
            stale = final.parent / f".{final.name}.stale-{uuid.uuid4().hex}"
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
