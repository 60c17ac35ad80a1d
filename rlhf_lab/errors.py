"""Errors that end a run with one clear message and a non-zero exit status."""

from __future__ import annotations

import math
from pathlib import Path


class RlhfLabError(Exception):
    """An error the user can act on; the CLI prints its message alone (no traceback) and exits 2."""


class UnknownComponentError(RlhfLabError, KeyError):
    """A component name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class NonFiniteLossError(RlhfLabError):
    """A training loss became NaN or infinite."""


class DataError(RlhfLabError):
    """Malformed input data; the message names the file and line."""


def check_finite(loss, stage: str, step: int, checkpoint_dir=None, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` naming ``stage``, ``step`` and the checkpoint kept."""
    value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
    if math.isfinite(value):
        return
    where = ""
    if checkpoint_dir is not None:
        last = Path(checkpoint_dir) / "last.ckpt"
        where = f"; the last good checkpoint is kept: {last}" if last.exists() else f"; no checkpoint was written yet in {checkpoint_dir}"
    raise NonFiniteLossError(f"stage '{stage}', step {step}: {what} is {value}{where}")


def check_weights_finite(model, stage: str) -> None:
    """Raise :class:`NonFiniteLossError` if any weight of ``model`` is NaN or infinite: checked at the
    end of every training stage, so a diverged model is stopped where it diverged, not downstream."""
    import torch

    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteLossError(f"stage '{stage}' ended with NaN or infinite weights in {len(bad)} tensor(s), the first {bad[0]}; lower its learning rate")


def nonfinite_figures(metrics: dict) -> list[str]:
    """``name=value`` of every figure in ``metrics`` that is NaN or infinite."""
    return [f"{k}={v}" for k, v in sorted(metrics.items()) if isinstance(v, float) and not math.isfinite(v)]


_DISK_ERRNOS = {"ENOSPC": "is full", "EDQUOT": "is over its quota", "EROFS": "is read-only", "EACCES": "is not writable by this user",
                "ENOENT": "vanished (a directory was removed while the run used it)", "EIO": "gave an input/output error"}
_DISK_TEXTS = {"No space left on device": "is full", "Disk quota exceeded": "is over its quota", "Read-only file system": "is read-only"}


def resource_failure(exc: BaseException, run_dir: Path | None = None) -> str | None:
    """One line for a failure of the machine rather than of the run (a full, read-only or vanished
    disk; memory exhausted), found anywhere in ``exc``'s chain of causes; None for anything else.

    Libraries wrap these (safetensors' ``SafetensorError``, Lightning's checkpoint I/O), so the chain and
    the message text are searched, not only the exception's type.
    """
    import errno
    import shutil

    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError):
            return ("the machine ran out of memory; a smaller batch (the stage's batch_size, algo.minibatch_size), "
                    "model.gradient_checkpointing=true or model.lora.r=16 needs less; finished stages are cached")
        what, path = None, None
        if isinstance(current, OSError) and current.errno is not None:
            what = _DISK_ERRNOS.get(errno.errorcode.get(current.errno, ""))
            path = current.filename
        if what is None:
            what = next((v for k, v in _DISK_TEXTS.items() if k in str(current)), None)
        if what is not None:
            where = Path(path) if path else run_dir
            free = ""
            probe = where
            while probe is not None and not probe.exists() and probe != probe.parent:
                probe = probe.parent
            if probe is not None and probe.exists():
                free = f" ({shutil.disk_usage(probe).free / 2**20:.0f} MB free there now)"
            return (f"the disk at {where or 'the run directory'} {what}{free}: free space or choose another place (hydra.run.dir, "
                    "cache_dir), then run the same command again; finished stages are cached and training resumes from its "
                    "last checkpoint")
        current = current.__cause__ or current.__context__
    return None
