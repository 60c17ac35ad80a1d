"""The loggers of a stage: the one ``logger`` selects (csv, tensorboard, wandb offline unless configured)
plus those plugins add; and the check of the wandb settings before any work.

Imports no Lightning at module level (the plan checks the logger settings before any torch work).
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig


def wandb_mode(configured: str | None) -> str:
    """Offline unless the user configured wandb (``WANDB_MODE``, an API key or a netrc login)."""
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_wandb_key() else "offline"


WANDB_MODES = ("online", "offline", "shared", "disabled", "dryrun", "run")
"""What wandb accepts in ``WANDB_MODE``."""


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def check_logger(cfg: DictConfig) -> None:
    """Refuse, before any work, a wandb setting that would fail at the first stage's logger."""
    from rlhf_lab.errors import RlhfLabError

    if cfg.logger.name != "wandb":
        return
    env = os.environ.get("WANDB_MODE")
    if not cfg.logger.mode and env and env not in WANDB_MODES:
        raise RlhfLabError(f"environment variable WANDB_MODE={env!r} is not a wandb mode ({', '.join(WANDB_MODES)})")
    if wandb_mode(cfg.logger.mode) in ("online", "shared", "run") and not _has_wandb_key():
        raise RlhfLabError(
            f"wandb would log online ({f'logger.mode={cfg.logger.mode}' if cfg.logger.mode else f'WANDB_MODE={env}'}) but no API key is configured: "
            "set WANDB_API_KEY or run `wandb login`, or log offline (logger.mode=offline, the default without a key)"
        )


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


def build_loggers(cfg: DictConfig, stage: str, run_dir: Path, group: str) -> list:
    """The logger ``cfg.logger`` selects plus those plugins add, for one stage."""
    from rlhf_lab.plugin_manager import hook_items

    from lightning.pytorch.loggers import Logger

    return [build_logger(cfg, stage, run_dir, group)] + hook_items("rlhf_lab_loggers", Logger, "lightning.pytorch.loggers.Logger",
                                                                    cfg=cfg, stage=stage, run_dir=run_dir)


def close_loggers(loggers: list) -> None:
    """Flush and finalise loggers, and close wandb runs so the next stage starts its own run."""
    for logger in loggers:
        logger.save()
        logger.finalize("success")
        experiment = getattr(logger, "_experiment", None)
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()
