"""One run per run directory (rlhf_lab/run_lock.py): two identical runs started together do not share
one; a lock left by a dead run is taken over; the lock goes when the run ends, even when it fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import TINY_UPSTREAM

from rlhf_lab.errors import RlhfLabError
from rlhf_lab.run_lock import LOCK_NAME, RunDirLock

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)

STOP_AT_SFT = [*(o for o in TINY_UPSTREAM if not o.startswith("eval.")), "stop_after=sft", "logger=csv"]


def test_a_second_claim_is_refused_while_the_first_holds_and_allowed_after(tmp_path):
    with RunDirLock(tmp_path / "run") as first:
        assert json.loads(first.path.read_text())["pid"] == os.getpid()
        with pytest.raises(RlhfLabError, match="in use by another run") as error:
            RunDirLock(tmp_path / "run").__enter__()
        assert str(first.path) in str(error.value) and "hydra.run.dir" in str(error.value)
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunDirLock(tmp_path / "run"):
        pass


def test_a_lock_left_by_a_dead_run_is_taken_over_and_one_from_another_host_is_not(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead), "started": "earlier"}))
    with RunDirLock(run) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    (run / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "earlier"}))
    with pytest.raises(RlhfLabError, match="elsewhere"):
        RunDirLock(run).__enter__()
    assert json.loads((run / LOCK_NAME).read_text())["host"] == "elsewhere"  # not ours to delete


def test_a_run_into_a_directory_in_use_stops_and_a_killed_runs_directory_is_free_again(tmp_path):
    """While one run holds a directory (here waiting for people to label), a second run into it stops
    with exit 2 naming the directory; once the first is killed (no cleanup), the next run takes the
    directory over and writes whole outputs."""
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    where = [f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    waiting = [*STOP_AT_SFT[:-2], "stop_after=preferences", "logger=csv", "feedback=human", "feedback.labellers=[ann]",
               "feedback.port=0", f"feedback.db={tmp_path / 'labels.db'}", "feedback.timeout_minutes=10"]
    first = subprocess.Popen([sys.executable, "-m", "rlhf_lab", *waiting, *where], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (tmp_path / "run" / LOCK_NAME).exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.05)
        holders_overrides = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
        second = subprocess.run([sys.executable, "-m", "rlhf_lab", *STOP_AT_SFT, *where], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert first.poll() is None, "the first run should still be waiting for labels"
        # Hydra wrote the refused run's config into .hydra/ before it was refused; the holder's is back.
        assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == holders_overrides
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert "in use by another run" in second.stderr and str(tmp_path / "run") in second.stderr and "Traceback" not in second.stderr
    assert f"pid {first.pid}" in second.stderr
    third = subprocess.run([sys.executable, "-m", "rlhf_lab", *STOP_AT_SFT, *where], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["sft/val_loss"] > 0
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_the_lock_goes_when_the_run_fails(tmp_path):
    from conftest import run_cli

    # The model directory is missing: the run has claimed its directory and fails in its first stage.
    result = run_cli([*STOP_AT_SFT, f"model.name_or_path={tmp_path / 'missing'}", f"cache_dir={tmp_path / 'cache'}",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2 and "missing" in result.stderr
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_identical_commands_started_together_each_get_a_run_directory(tmp_path):
    """Three copies of one command in one working directory, started at once: each writes into its
    own default run directory (the second it started and its pid), none is refused as 'in use'."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "rlhf_lab", *STOP_AT_SFT, f"cache_dir={tmp_path / 'cache'}"]
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [run.communicate()[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [e[-2000:] for e in errors]
    run_dirs = sorted((tmp_path / "outputs").glob("*/*/metrics.json"))
    assert len(run_dirs) == 3
    assert sorted(d.parent.name.rsplit("-", 1)[1] for d in run_dirs) == sorted(str(run.pid) for run in runs)
