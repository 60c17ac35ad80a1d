"""One ``Trainer`` recipe for every stage: accelerator, loggers, progress bar, checkpoints, plugin callbacks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def wandb_mode(configured: str | None) -> str:
    """Offline unless the user configured wandb (``WANDB_MODE``, an API key or a netrc login)."""
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def build_logger(cfg: DictConfig, stage: str, run_dir: Path, group: str):
    """The logger ``cfg.logger.name`` selects, writing under ``run_dir``."""
    name = cfg.logger.name
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="csv", version=stage)
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=stage)
    from lightning.pytorch.loggers import WandbLogger

    from omegaconf import OmegaConf

    return WandbLogger(
        project=cfg.logger.project,
        group=group,
        job_type=stage,
        name=f"{Path(run_dir).name}-{stage}",
        save_dir=str(run_dir),
        mode=wandb_mode(cfg.logger.mode),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def build_trainer(cfg: DictConfig, stage: str, run_dir: Path, group: str, **trainer_kwargs: Any):
    """A Lightning ``Trainer`` for ``stage`` built from ``cfg.trainer``; kwargs set the stage's length."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar

    from rlhf_lab.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    t = cfg.trainer
    callbacks = [
        ModelCheckpoint(
            dirpath=str(checkpoint_dir(run_dir, stage)), save_last=True, save_top_k=0, every_n_train_steps=t.checkpoint_every_n_steps
        )
    ]
    if t.progress_bar == "rich":
        callbacks.append(RichProgressBar(leave=True))
    elif t.progress_bar == "tqdm":
        callbacks.append(TQDMProgressBar())
    for extra in pm.hook.rlhf_lab_callbacks(cfg=cfg, stage=stage):
        callbacks.extend(extra)
    loggers = [build_logger(cfg, stage, run_dir, group)]
    for extra in pm.hook.rlhf_lab_loggers(cfg=cfg, stage=stage, run_dir=run_dir):
        loggers.extend(extra)
    return Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=t.precision,
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar != "none",
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )


def checkpoint_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "checkpoints" / stage


def finish_loggers(trainer) -> None:
    """Close wandb runs so the next stage starts its own run in the same process."""
    for logger in trainer.loggers:
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()
