"""The installed wheel (not the checkout) finds its configs through pkg://rlhf_lab.conf and runs."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import SUBPROCESS_TIMEOUT, TINY, run_cli

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )
    wheel = next(wheels.glob("rlhf_lab-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=SUBPROCESS_TIMEOUT)
    python = venv / "bin" / "python"
    # Dependencies come from this environment's site-packages (no network, no reinstall of torch);
    # a .pth entry does not run that directory's own .pth files, so the editable checkout stays out.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, timeout=SUBPROCESS_TIMEOUT)

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    where = subprocess.run([str(python), "-c", "import rlhf_lab, rlhf_lab.conf; print(rlhf_lab.__file__); print(rlhf_lab.conf.__file__)"], cwd=workdir, capture_output=True, text=True, check=True)
    assert str(ROOT) not in where.stdout and str(venv) in where.stdout

    listing = run_cli(["plugins"], cwd=workdir, python=str(python))
    assert listing.returncode == 0 and "ppo" in listing.stdout, listing.stderr
    result = run_cli([*TINY, "logger=csv", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=workdir, python=str(python))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "eval/ppo/win_rate" in metrics
