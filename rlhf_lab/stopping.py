"""A stop signal ends a run as a failure, with its work saved.

SIGTERM is how SLURM, Kubernetes and systemd stop a job, and SIGINT is Ctrl-C. Either one, during a
training stage, lets the batch in progress finish, saves the stage's ``last.ckpt`` at that boundary
(:class:`StopAtBoundary`) and ends the run; anywhere else (sampling, evaluation, loading) it ends the
run at once. The command line then says in one line what was saved and how to resume, and exits
128 + the signal's number (143 for SIGTERM, 130 for SIGINT), the shell's convention, so that no
scheduler or wrapper records a stopped run as a success. A second signal ends the run at once.

Lightning installs its own SIGTERM handler while it fits and calls the one it found (ours) too; it
may also end the fit with its ``SIGTERMException`` (a ``SystemExit`` with no code, i.e. status 0) at a
point of its own choosing: :func:`stop_of` reads that as the stop it is.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import Callback

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(BaseException):
    """The run was stopped by a signal.

    A ``BaseException``, like ``KeyboardInterrupt``: no ``except Exception`` in the run or in a
    library may swallow it and carry on.

    :param signum: the signal's number.
    :param stage: the training stage it stopped, when it stopped one.
    :param step: that stage's global step at the stop.
    :param saved: the checkpoint written at the stop, if any.
    """

    def __init__(self, signum: int, stage: Optional[str] = None, step: Optional[int] = None, saved: Optional[Path] = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.stage, self.step, self.saved = signum, stage, step, saved

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    signum: Optional[int] = None
    """The first stop signal received (None: none)."""
    fitting: bool = False
    """A single-process training stage is fitting: it stops at its next batch boundary."""
    stopped_stage: Optional[tuple] = None
    """(stage, step, its last.ckpt or None) of a fit that Lightning ended with its own SIGTERMException."""


def install() -> dict:
    """Handle SIGTERM and SIGINT as stops (main thread only: Python delivers signals there); returns
    the handlers they had, for :func:`restore`."""
    _State.signum, _State.fitting, _State.stopped_stage = None, False, None
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handle)
    return previous


def restore(previous: dict) -> None:
    """Put back the handlers :func:`install` replaced (a run inside a longer-lived process ends)."""
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _handle(signum: int, frame) -> None:
    first = _State.signum is None
    if first:
        _State.signum = signum
    if first and _State.fitting:
        return  # StopAtBoundary saves and stops at the end of the batch in progress
    raise RunStopped(signum)


def requested() -> Optional[int]:
    """The stop signal received so far, or None."""
    return _State.signum


def stop_of(exc: BaseException) -> Optional[RunStopped]:
    """``exc`` as a :class:`RunStopped` when it is a stop (ours, Lightning's SIGTERMException, or a
    KeyboardInterrupt raised before our handler was installed); else None."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(exc, RunStopped):
        return exc
    if isinstance(exc, SIGTERMException):  # after the last batch, at an epoch's end: that epoch's checkpoint
        stage, step, saved = _State.stopped_stage or (None, None, None)
        return RunStopped(signal.SIGTERM, stage, step, saved)
    if isinstance(exc, KeyboardInterrupt):  # Python's own SIGINT handler raised it
        return RunStopped(signal.SIGINT)
    return None


def message(stop: RunStopped, run_dir: Path) -> str:
    """One line: what stopped the run, what was saved, and how to go on."""
    if stop.saved is not None:
        saved = f"stage '{stop.stage}' saved its checkpoint at step {stop.step} ({stop.saved})"
    else:
        checkpoints = sorted(p.parent.name for p in (Path(run_dir) / "checkpoints").glob("*/last.ckpt"))
        saved = (f"the last checkpoints of {', '.join(checkpoints)} are kept under {Path(run_dir) / 'checkpoints'}"
                 if checkpoints else "no training checkpoint had been written yet")
    return (f"stopped by {stop.name}: {saved}; finished stages are cached. To go on, run the same command again "
            f"(it resumes from the cache and the checkpoint), or: python -m rlhf_lab resume={run_dir}")


class StopAtBoundary(Callback):
    """Ends a single-process fit at the first batch boundary after a stop signal, once ``checkpoint``
    (the stage's :class:`~rlhf_lab.training.LastCheckpoint`) has saved the batch just trained, so a
    resume continues exactly from there.

    Runs after ``checkpoint`` in the callback list (which advances the loader's position first).
    """

    def __init__(self, checkpoint, stage: str) -> None:
        self.checkpoint, self.stage = checkpoint, stage

    def on_fit_start(self, trainer, pl_module) -> None:
        _State.fitting = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        signum = requested()
        if signum is None:
            return
        _State.fitting = False  # a signal during the save below ends the run at once
        self.checkpoint.save(trainer)
        raise RunStopped(signum, self.stage, trainer.global_step, self.checkpoint.directory / "last.ckpt")

    def on_fit_end(self, trainer, pl_module) -> None:
        _State.fitting = False
        signum = requested()
        if signum is not None:  # after the last batch (validation, the epoch's end): its checkpoint is written
            last = self.checkpoint.directory / "last.ckpt"
            raise RunStopped(signum, self.stage, trainer.global_step, last if last.exists() else None)

    def on_exception(self, trainer, pl_module, exception) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        _State.fitting = False
        if isinstance(exception, SIGTERMException):
            last = self.checkpoint.directory / "last.ckpt"
            _State.stopped_stage = (self.stage, trainer.global_step, last if last.exists() else None)
