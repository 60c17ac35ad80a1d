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
