"""A stop signal (a scheduler's SIGTERM, Ctrl-C's SIGINT) ends a run as a failure with its work saved:
the batch in progress finishes, the stage saves its checkpoint there, the run says so in one line and
exits 128 + the signal's number; a sweep lists a job that did not finish and exits non-zero."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from rlhf_lab import stopping
from rlhf_lab.training import LastCheckpoint

from conftest import SUBPROCESS_TIMEOUT, TINY_UPSTREAM, run_cli


@pytest.fixture(autouse=True)
def _own_handlers():
    """Each test installs the run's handlers; the test process gets its own back afterwards."""
    saved = {s: signal.getsignal(s) for s in stopping.STOP_SIGNALS}
    yield
    stopping.restore(saved)
    stopping._State.signum, stopping._State.fitting, stopping._State.stopped_stage = None, False, None


class _Line(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return ((self.weight - batch) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.arange(10.0), batch_size=1)


class _SignalAt(Callback):
    """Sends ``signum`` to this process in the middle of batch ``at`` (its training step has run)."""

    def __init__(self, signum: int, at: int) -> None:
        self.signum, self.at = signum, at

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step + 1 == self.at:
            os.kill(os.getpid(), self.signum)


def _fit(tmp_path, signum: int, at: int, every_n: int = 4):
    stopping.install()
    last = LastCheckpoint(tmp_path / "checkpoints" / "sft", every_n)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[_SignalAt(signum, at), last, stopping.StopAtBoundary(last, "sft")])
    with pytest.raises(stopping.RunStopped) as stopped:
        trainer.fit(_Line())
    return trainer, stopped.value


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_batch_lets_the_batch_finish_saves_it_and_stops(tmp_path, signum):
    trainer, stop = _fit(tmp_path, signum, at=3)
    # The third batch finished (its optimiser step counted) and nothing after it ran.
    assert trainer.global_step == 3
    assert (stop.signum, stop.stage, stop.step, stop.exit_code) == (signum, "sft", 3, 128 + signum)
    saved = torch.load(stop.saved, weights_only=False)
    assert saved["global_step"] == 3  # the checkpoint is of the stop's boundary, not the last periodic one (step 0)
    line = stopping.message(stop, tmp_path)
    assert line.startswith(f"stopped by {signal.Signals(signum).name}: stage 'sft' saved its checkpoint at step 3 ")
    assert f"resume={tmp_path}" in line


def test_a_second_signal_or_one_outside_training_stops_at_once(tmp_path):
    stopping.install()
    with pytest.raises(stopping.RunStopped) as stopped:
        os.kill(os.getpid(), signal.SIGTERM)  # no training stage fits: nothing to wait for
    assert stopped.value.exit_code == 143 and stopped.value.saved is None
    stopping.install()
    stopping._State.fitting = True
    os.kill(os.getpid(), signal.SIGINT)  # the first waits for the batch boundary...
    assert stopping.requested() == signal.SIGINT
    with pytest.raises(stopping.RunStopped) as again:
        os.kill(os.getpid(), signal.SIGTERM)  # ...a second does not
    assert again.value.signum == signal.SIGTERM


def test_a_sigterm_lightning_ends_at_an_epochs_end_names_the_stage_and_its_checkpoint(tmp_path):
    """A signal during the last batch's epoch-end work: Lightning raises its own SIGTERMException (an exit 0
    by itself); the stop names the stage, its step and the epoch's checkpoint."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class SignalAtEpochEnd(Callback):
        def on_train_epoch_end(self, trainer, module):
            os.kill(os.getpid(), signal.SIGTERM)

    stopping.install()
    last = LastCheckpoint(tmp_path / "checkpoints" / "sft", 100)
    trainer = Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[last, SignalAtEpochEnd(), stopping.StopAtBoundary(last, "sft")])
    with pytest.raises(BaseException) as ended:
        trainer.fit(_Line())
    stop = stopping.stop_of(ended.value)
    assert isinstance(ended.value, (SIGTERMException, stopping.RunStopped)) and trainer.current_epoch == 1
    assert (stop.exit_code, stop.stage, stop.step) == (143, "sft", 10)
    assert torch.load(stop.saved, weights_only=False)["global_step"] == 10


def test_lightnings_own_sigterm_exit_and_keyboard_interrupt_read_as_stops(tmp_path):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    assert stopping.stop_of(SIGTERMException()).exit_code == 143  # Lightning's alone would exit 0
    assert stopping.stop_of(KeyboardInterrupt()).exit_code == 130
    assert stopping.stop_of(ValueError("x")) is None
    (tmp_path / "checkpoints" / "reward_model").mkdir(parents=True)
    (tmp_path / "checkpoints" / "reward_model" / "last.ckpt").write_bytes(b"")
    line = stopping.message(stopping.stop_of(SIGTERMException()), tmp_path)
    assert "the last checkpoints of reward_model are kept under" in line
    assert "no training checkpoint" in stopping.message(stopping.RunStopped(signal.SIGTERM), tmp_path / "nothing")


SIGNALLER = """
import os, signal, sys
from lightning.pytorch.callbacks import Callback
import rlhf_lab.plugin_manager as plugin_manager
from rlhf_lab import cli, hookimpl

STAGE, AT = sys.argv[1], int(sys.argv[2])

class SignalAt(Callback):
    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step + 1 == AT:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, in the middle of a batch

class Signaller:
    @hookimpl
    def rlhf_lab_callbacks(self, cfg, stage):
        return [SignalAt()] if stage == STAGE else []

plugin_manager._PM = plugin_manager.build_plugin_manager(load_entry_points=False, extra_plugins=(Signaller(),))
sys.argv = ["rlhf_lab", *sys.argv[3:]]
cli.main()
"""


@pytest.mark.slow
def test_sigterm_through_the_cli_exits_143_with_one_line_and_the_run_resumes(tmp_path):
    args = [*TINY_UPSTREAM, "algo=dpo", "feedback.rounds=1", "algo.epochs=1", "algo.batch_size=16", "logger=csv",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    stopped = subprocess.run([sys.executable, "-c", SIGNALLER, "policy", "3", *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=SUBPROCESS_TIMEOUT)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    checkpoint = tmp_path / "run" / "checkpoints" / "policy" / "last.ckpt"
    assert f"rlhf_lab: stopped by SIGTERM: stage 'policy' saved its checkpoint at step 3 ({checkpoint})" in stopped.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 3
    resumed = run_cli([f"resume={tmp_path / 'run'}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"policy: resuming from {checkpoint}" in (tmp_path / "run" / "rlhf_lab.log").read_text()
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.slow
def test_a_sweep_runs_every_job_lists_the_refused_one_and_exits_1_then_resumes_only_that_one(tmp_path):
    sweep = tmp_path / "sweep"
    upstream = [o for o in TINY_UPSTREAM if not o.startswith("eval.")]  # stop_after=sft: no evaluation
    args = [*upstream, "stop_after=sft", "logger=csv", f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    result = run_cli(["-m", *args, "sft.lr=1e-3,-1,2e-3"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "1 job(s) of the sweep did not finish: job 1 (sft.lr=-1): refused: bad value in config 'sft'" in result.stderr
    with open(sweep / "comparison.csv", newline="") as fh:
        rows = {r["job"]: r for r in csv.DictReader(fh)}
    assert [rows[j]["status"] for j in ("0", "1", "2")] == ["ok", "refused", "ok"]
    assert "got lr=-1.0" in rows["1"]["reason"]
    assert "| 1 | sft.lr=-1 | ppo | **refused**: bad value in config 'sft': " in (sweep / "comparison.md").read_text()
    # Again into the same sweep: the finished jobs are not run again, the refused one is (and is refused again).
    again = run_cli([f"resume={sweep}"], cwd=tmp_path)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "job 0 finished before" in again.stdout and "job 2 finished before" in again.stdout
