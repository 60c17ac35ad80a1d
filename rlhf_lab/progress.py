"""The progress display: Lightning's bars, with the time the whole stage has left.

Lightning's bars tell the time left in the current epoch. On real data a stage is many epochs or a
step limit away from its end, and that is what a user deciding whether to wait needs to know: each
bar here adds ``stage_left``, from the share of the stage done (batches over its epochs, or optimiser
steps over ``max_steps``, whichever is further) and the rate seen since this process started it (a
resumed stage does not count the restored share as fast progress).
"""

from __future__ import annotations

import math
import time
from typing import Optional


def stage_fraction(trainer) -> float:
    """Share of the stage done: training batches over ``max_epochs`` epochs, or optimiser steps over
    ``max_steps``, whichever limit is nearer to being reached."""
    shares = []
    per_epoch = trainer.num_training_batches
    if trainer.max_epochs and trainer.max_epochs > 0 and per_epoch and math.isfinite(per_epoch):
        done = trainer.fit_loop.epoch_loop.batch_progress.total.completed
        shares.append(done / (trainer.max_epochs * per_epoch))
    if trainer.max_steps and trainer.max_steps > 0:
        shares.append(trainer.global_step / trainer.max_steps)
    return min(1.0, max(shares)) if shares else 0.0


def format_seconds(seconds: float) -> str:
    """``1h05m``, ``12m03s`` or ``42s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class StageClock:
    """The time a stage has left, at the rate seen since the first reading of this process."""

    def __init__(self) -> None:
        self._first: Optional[tuple[float, float]] = None

    def seconds_left(self, fraction: float, now: Optional[float] = None) -> Optional[float]:
        """None until some progress was seen after the first reading."""
        now = time.monotonic() if now is None else now
        if self._first is None:
            self._first = (now, fraction)
            return None
        start, first = self._first
        if fraction <= first:
            return None
        return (now - start) * (1.0 - fraction) / (fraction - first)


class _StageLeft:
    """Adds ``stage_left`` to a Lightning progress bar's figures while the stage trains."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        if trainer.training:
            clock = self.__dict__.setdefault("_stage_clock", StageClock())
            left = clock.seconds_left(stage_fraction(trainer))
            if left is not None:
                items["stage_left"] = format_seconds(left)
        return items


def progress_bar(kind: str):
    """The bar of ``trainer.progress_bar`` (rich or tqdm) with the stage's time left."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    base = {"rich": RichProgressBar, "tqdm": TQDMProgressBar}[kind]
    return type(f"StageLeft{base.__name__}", (_StageLeft, base), {})()
