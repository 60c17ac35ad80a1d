"""One run per run directory: a second run started into a directory in use stops with a message.

The default run directory carries the second a run starts in and its process id (conf/config.yaml), so
identical commands started together get their own; two runs given one directory by hand (``hydra.run.dir``)
would, without a claim, interleave their logs and overwrite each other's metrics, policy and
checkpoints, and both exit 0. The run claims its directory by creating a lock file with
``O_CREAT | O_EXCL`` (atomic on local disks and on NFS v3+), holding its host, pid and start time,
and removes it when it ends, however it ends. A lock left by a run that died (its pid no longer runs on
this host) is taken over; a lock from another host cannot be checked and is refused, naming the file.
Hydra writes its own ``.hydra/`` files (and log lines) into the directory before the run starts, so a
refused second run has already overwritten the holder's record of its config: the holder keeps a copy
(``.rlhf_lab_run.lock.hydra/``) for as long as it holds the lock, and the refused run puts it back.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from rlhf_lab.errors import RlhfLabError

LOCK_NAME = ".rlhf_lab_run.lock"
HYDRA_COPY = LOCK_NAME + ".hydra"
"""The holder's copy of its ``.hydra/`` directory, restored by a run that is refused."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class RunDirLock:
    """Claim ``run_dir`` for this process for the duration of a ``with`` block."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(self.owner, fh)
        return True

    def _keep_hydra_record(self) -> None:
        hydra_dir, copy = self.run_dir / ".hydra", self.run_dir / HYDRA_COPY
        shutil.rmtree(copy, ignore_errors=True)
        if hydra_dir.is_dir():
            shutil.copytree(hydra_dir, copy)

    def _restore_holders_hydra_record(self) -> None:
        copy = self.run_dir / HYDRA_COPY
        if copy.is_dir():
            shutil.copytree(copy, self.run_dir / ".hydra", dirs_exist_ok=True)

    def __enter__(self) -> "RunDirLock":
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self._create():
                self._keep_hydra_record()
                return self
        except OSError as exc:
            raise RlhfLabError(f"run directory {self.run_dir}: cannot write there ({exc.strerror or exc}); choose another with hydra.run.dir=...") from None
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            holder = {}
        same_host = holder.get("host") == self.owner["host"]
        pid = holder.get("pid")
        if same_host and isinstance(pid, int) and not _alive(pid):
            # The run that held it died without cleaning up: its directory is free again.
            self.path.unlink(missing_ok=True)
            if self._create():
                self._keep_hydra_record()
                return self
        self._restore_holders_hydra_record()
        raise RlhfLabError(
            f"run directory {self.run_dir} is in use by another run (pid {pid} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}). Start concurrent runs in their own directories (hydra.run.dir=...), "
            f"or delete {self.path} if that run is gone."
        )

    def __exit__(self, *exc) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if holder == self.owner:
            shutil.rmtree(self.run_dir / HYDRA_COPY, ignore_errors=True)
            self.path.unlink(missing_ok=True)
