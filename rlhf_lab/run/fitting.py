"""Fitting one stage's Lightning module, the same way for every stage: resumable, logged, gathered, checked.

Written once here for the SFT, reward-model and policy builders: the ``Trainer`` recipe
(:func:`rlhf_lab.training.build_trainer`) resumed from the checkpoint an interrupted build left, the
loggers closed whatever happens, the trained model gathered whole on rank 0 and checked finite.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)


def fit(run, module, stage: str, artifact: str, key: str, max_epochs: int, max_steps: Optional[int] = None):
    """Fit ``module`` as the ``Trainer`` stage ``stage`` of the build of ``artifact`` ``key``, for
    ``max_epochs`` or ``max_steps`` optimiser steps, whichever comes first; returns the trainer.

    Each checkpoint it saves is recorded in the cache's in-progress index, so the same command started
    again (in a new run directory) resumes this build where it stopped.
    """
    from rlhf_lab.loggers import close_loggers
    from rlhf_lab.training import build_trainer, checkpoint_dir

    resume = run.store.resume_point(stage, artifact, key)
    own = checkpoint_dir(run.run_dir, stage) / "last.ckpt"
    trainer = build_trainer(
        run.cfg, stage, run.run_dir, run.group, on_checkpoint=lambda path: run.store.record_checkpoint(artifact, key, path),
        resuming=resume is not None and resume == own.resolve(), world_size=run.trainer_plan.world_size, max_epochs=max_epochs,
        max_steps=-1 if max_steps is None else max_steps,
    )
    if resume is not None:
        log.info("%s: resuming from %s", stage, resume)
    try:
        trainer.fit(module, ckpt_path=str(resume) if resume is not None else None)
    finally:
        close_loggers(trainer.loggers)
    return trainer


def gathered(run, model, reload: Callable[[], Any], stage: str) -> Optional[Any]:
    """``model`` whole on rank 0, checked finite; None on the other ranks (every rank must call it).

    Sharded (FSDP, ZeRO-3) or trained by DeepSpeed, the model is gathered from its shards into a model
    ``reload()`` builds (:func:`rlhf_lab.sharding.consolidated`).
    """
    from rlhf_lab.errors import check_weights_finite
    from rlhf_lab.sharding import consolidated

    model = consolidated(model, reload, rebuild=run.plan.deepspeed)
    if not run.ranks.is_main:
        return None
    check_weights_finite(model, stage)
    return model


def figures(module, trainer, namespace: str) -> dict[str, float]:
    """The figures under ``namespace/`` a stage logged: this fit's, over those restored with its
    checkpoint (a stage resumed after its last batch logs nothing new)."""
    restored = getattr(module, "resumed_figures", {})
    logged = {**restored, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
    return {k: v for k, v in logged.items() if k.startswith(f"{namespace}/")}
