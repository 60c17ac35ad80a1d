"""Several processes for one run (``trainer.strategy=ddp`` with more than one device).

Lightning's own launcher starts the other ranks at the first ``Trainer.fit`` by running the command
line again. Here that would compose the config again (a sweep would relaunch its sweep in every
child), claim the run directory, build the cached stages and evaluate in every rank. Instead, rank 0
starts the other ranks when the run starts (:meth:`Ranks.launch`): each worker gets the composed
config, not the command line (:mod:`rlhf_lab.run.worker`), joins the process group and walks the same
experiment. Because
``LOCAL_RANK`` is set in every process, Lightning starts nothing and finds the process group ready.

Who does what (the experiment asks :attr:`Ranks.is_main`):

- rank 0 claims the run directory, takes the cache's locks, builds and publishes artifacts, writes
  checkpoints and outputs, evaluates and logs;
- every rank joins every ``Trainer.fit`` (each shards the data itself, ``resume.ResumableLoader``)
  and loads what rank 0 published;
- rank 0's decisions (was an artifact in the cache or is it being built, where is it, which
  checkpoint to resume from) travel through a key-value store (:meth:`Ranks.tell`,
  :meth:`Ranks.hear`), which waits as long as rank 0 lives: a worker may wait hours while rank 0
  collects human labels, longer than any collective's timeout.

A failure anywhere ends the run: rank 0 stops the workers when it fails, and a watchdog in rank 0
ends the run, naming the rank and the tail of its log (``<run dir>/ranks/rank<k>.log``), when a worker
fails.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

RANK_ENV = ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RLHF_LAB_CONTROL_PORT")
"""Environment variables that place a process in a run's group of ranks."""

WORKER_GRACE_SECONDS = 20
"""After a worker fails, how long rank 0 waits to fail on its own (a collective with a dead peer
errors) before the watchdog ends the process."""

WORKER_EXIT_SECONDS = 300
"""How long rank 0, done, waits for the workers to end before it stops them."""

STORE_TIMEOUT = timedelta(days=30)
"""How long a worker waits for rank 0's next decision: as long as rank 0 lives, in practice."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Ranks:
    """The processes of one run and rank 0's channel to the others; one process is ``Ranks.single()``."""

    def __init__(self, rank: int = 0, world: int = 1, store=None) -> None:
        self.rank, self.world, self.store = rank, world, store
        self._workers: list[subprocess.Popen] = []
        self._spec: Optional[Path] = None
        self._threads: Optional[int] = None
        self._logs: list[Path] = []
        self._saved_env: dict[str, Optional[str]] = {}
        self._watchdog: Optional[threading.Thread] = None
        self._closing = threading.Event()

    @classmethod
    def single(cls) -> "Ranks":
        return cls()

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0: it builds, writes and evaluates."""
        return self.rank == 0

    # --- rank 0's decisions -------------------------------------------------------------------

    def tell(self, name: str, value: Any) -> None:
        """Rank 0: publish ``value`` (JSON) under ``name`` (each name once per run)."""
        if self.world > 1:
            self.store.set(name, json.dumps(value))

    def hear(self, name: str) -> Any:
        """A worker: what rank 0 told under ``name``, waiting until it does."""
        return json.loads(self.store.get(name))

    def share(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` on rank 0, the same value on every rank."""
        if self.is_main:
            value = compute()
            self.tell(name, value)
            return value
        return self.hear(name)

    # --- starting and ending ------------------------------------------------------------------

    @classmethod
    def launch(cls, world: int, device_type: str, spec: dict, run_dir: Path) -> "Ranks":
        """Rank 0: start ranks 1..world-1 on this machine, each running ``spec`` (the composed config,
        pickled with its schemas, and the run's directory), and join them in one process group."""
        ranks = cls(0, world)
        addr, ports = "127.0.0.1", (_free_port(), _free_port())
        env = {"MASTER_ADDR": addr, "MASTER_PORT": str(ports[0]), "RLHF_LAB_CONTROL_PORT": str(ports[1]),
               "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "NODE_RANK": "0"}
        folder = Path(run_dir) / "ranks"
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / "spec.pkl"
        spec_path.write_bytes(pickle.dumps(spec))
        ranks._spec = spec_path
        # Lightning sets the thread count per rank at each fit; a later one-process run in this process gets it back.
        ranks._saved_env = {k: os.environ.get(k) for k in (*RANK_ENV, "OMP_NUM_THREADS")}
        import torch

        ranks._threads = torch.get_num_threads()
        os.environ.update(env, LOCAL_RANK="0", RANK="0")
        try:
            from torch.distributed import TCPStore

            ranks.store = TCPStore(addr, ports[1], world, is_master=True, timeout=STORE_TIMEOUT, wait_for_workers=False)
            for rank in range(1, world):
                log_path = folder / f"rank{rank}.log"
                with open(log_path, "w") as out:
                    ranks._workers.append(subprocess.Popen(
                        [sys.executable, "-m", "rlhf_lab.run.worker", str(spec_path)],
                        env={**os.environ, **env, "LOCAL_RANK": str(rank), "RANK": str(rank)},
                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    ))
                ranks._logs.append(log_path)
            log.info("started ranks 1-%d (logs: %s)", world - 1, folder)
            ranks._watchdog = threading.Thread(target=ranks._watch, name="rlhf_lab-rank-watchdog", daemon=True)
            ranks._watchdog.start()
            ranks._init_process_group(device_type)
        except BaseException:
            ranks.close(failed=True)
            raise
        return ranks

    @classmethod
    def join(cls, device_type: str) -> "Ranks":
        """A worker: join the group rank 0 started (placed by the environment :meth:`launch` set)."""
        from torch.distributed import TCPStore

        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["RLHF_LAB_CONTROL_PORT"]), world, is_master=False, timeout=STORE_TIMEOUT)
        ranks = cls(rank, world, store)
        ranks._init_process_group(device_type)
        return ranks

    def _init_process_group(self, device_type: str) -> None:
        import torch
        import torch.distributed as dist

        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group(backend, init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
                                rank=self.rank, world_size=self.world)

    def worker_failure(self, wait: float = 0.0) -> Optional[str]:
        """Rank 0: which worker failed and how its log ends, or None (waiting up to ``wait`` seconds
        for one to finish failing: a rank 0 error is often the echo of a worker's)."""
        deadline = time.monotonic() + wait
        while True:
            for rank, (proc, log_path) in enumerate(zip(self._workers, self._logs), start=1):
                code = proc.poll()
                if code not in (None, 0):
                    how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"failed (exit code {code})"
                    return f"rank {rank} {how}; the end of {log_path}:\n{_log_tail(log_path)}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def _watch(self) -> None:
        while not self._closing.wait(1.0):
            failure = self.worker_failure()
            if failure is None:
                continue
            # Rank 0 is likely blocked in a collective with the dead rank: give it time to fail by itself.
            if self._closing.wait(WORKER_GRACE_SECONDS):
                return
            sys.stderr.write(f"Error: {failure}\n")
            sys.stderr.flush()
            for proc in self._workers:
                proc.kill()
            os._exit(1)

    def close(self, failed: bool = False) -> Optional[str]:
        """End the group: rank 0 waits for the workers (or stops them, ``failed``) and returns the
        failure of a worker if there was one; the environment is restored."""
        self._closing.set()
        failure = None
        if self._workers:
            for proc in self._workers:
                if failed:
                    proc.terminate()
            # The workers end at their last collective, long before rank 0 has evaluated; one still
            # running a while after rank 0 is done waits for something that will never come.
            deadline = time.monotonic() + (30 if failed else WORKER_EXIT_SECONDS)
            stuck = []
            for rank, proc in enumerate(self._workers, start=1):
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    stuck.append(rank)
            failure = None if failed else self.worker_failure()
            if stuck and not failed:
                failure = f"rank(s) {stuck} had not ended {WORKER_EXIT_SECONDS} s after rank 0 and were stopped (logs: {self._logs[0].parent})"
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        self.store = None
        if self._spec is not None:
            self._spec.unlink(missing_ok=True)
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return failure
