"""One ``Trainer`` recipe for every stage: accelerator, loggers, progress bar, checkpoints, plugin callbacks.

Imported only once a run starts (it imports Lightning), never at plugin import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from rlhf_lab.loggers import build_loggers


def plugin_callbacks(cfg: DictConfig, stage: str) -> list:
    """The callbacks plugins add to ``stage``'s ``Trainer`` (hook ``rlhf_lab_callbacks``), each checked to
    be a Lightning ``Callback``. The pre-flight calls it once for every stage a run trains."""
    from rlhf_lab.plugin_manager import hook_items

    return hook_items("rlhf_lab_callbacks", Callback, "lightning.pytorch.Callback", cfg=cfg, stage=stage)


def build_trainer(cfg: DictConfig, stage: str, run_dir: Path, group: str, on_checkpoint=None, resuming: bool = False, world_size: int = 1, **trainer_kwargs: Any):
    """A Lightning ``Trainer`` for ``stage`` built from ``cfg.trainer``; kwargs set the stage's length.

    :param on_checkpoint: called with the path of each ``last.ckpt`` saved (the cache's resume index).
    :param resuming: the stage resumes from its run directory's ``last.ckpt``: keep it.
    :param world_size: the run's processes (``check_trainer_config``).
    """
    from lightning.pytorch import Trainer
    from rlhf_lab.progress import progress_bar

    from rlhf_lab.stopping import StopAtBoundary

    t = cfg.trainer
    last = LastCheckpoint(checkpoint_dir(run_dir, stage), t.checkpoint_every_n_steps, on_checkpoint, resuming)
    callbacks = [last]
    if world_size == 1:
        # A stop signal ends the fit after the batch in progress, saved. With several processes each
        # rank would see it at a different batch; Lightning's own SIGTERM broadcast stops them together.
        callbacks.append(StopAtBoundary(last, stage))
    if t.progress_bar != "none":
        callbacks.append(progress_bar(t.progress_bar))
    callbacks.extend(plugin_callbacks(cfg, stage))
    plugins = []
    if world_size > 1:
        from lightning.fabric.plugins.environments import LightningEnvironment

        # The ranks are this run's own (distributed.py), even inside a SLURM job or a torchelastic agent.
        plugins.append(LightningEnvironment())
    return Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=strategy_for(cfg, world_size),
        plugins=plugins,
        precision=t.precision,
        logger=build_loggers(cfg, stage, run_dir, group),
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.progress_bar != "none",
        enable_model_summary=False,
        enable_checkpointing=False,  # LastCheckpoint (above) is the only checkpoint writer
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # our loaders shard themselves, by global batch (resume.ResumableLoader)
        **trainer_kwargs,
    )


def checkpoint_dir(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "checkpoints" / stage


class LastCheckpoint(Callback):
    """Keeps ``<dir>/last.ckpt``: every ``every_n`` training steps (batches) and at each epoch end.

    Counted in batches, not optimiser steps, so an on-policy iteration with many minibatch updates
    counts once. Each save goes to a temporary file first, so a crash mid-write leaves the previous
    checkpoint intact. Before a save it advances the position of a :class:`~rlhf_lab.resume.ResumableLoader`
    (the batch just trained counts as done); after one it calls ``on_checkpoint(path)``.
    """

    def __init__(self, directory: Path, every_n: int, on_checkpoint=None, resuming: bool = False) -> None:
        self.directory, self.every_n = Path(directory), max(1, every_n)
        self.on_checkpoint, self.resuming = on_checkpoint, resuming

    def save(self, trainer) -> None:
        import shutil

        self.directory.mkdir(parents=True, exist_ok=True)
        last, tmp = self.directory / "last.ckpt", self.directory / "last.ckpt.tmp"
        from rlhf_lab.deepspeed_zero import ZeroStrategy

        if not isinstance(trainer.strategy, ZeroStrategy):
            trainer.save_checkpoint(str(tmp), weights_only=False)
            if trainer.is_global_zero:
                os.replace(tmp, last)
        else:
            # DeepSpeed writes a directory, every rank its partition: into a fresh temporary one, then
            # swapped in by two renames (a directory cannot replace a non-empty one in one step).
            if trainer.is_global_zero and tmp.exists():
                shutil.rmtree(tmp)
            trainer.strategy.barrier("checkpoint")
            trainer.save_checkpoint(str(tmp), weights_only=False)  # ends at a barrier: every rank has written
            if trainer.is_global_zero:
                old = self.directory / "last.ckpt.old"
                if last.exists():
                    os.replace(last, old)
                os.replace(tmp, last)
                shutil.rmtree(old, ignore_errors=True)
        if trainer.is_global_zero and self.on_checkpoint is not None:
            self.on_checkpoint(last)

    def on_fit_start(self, trainer, pl_module) -> None:
        # A reused run directory must not offer an earlier run's checkpoint as this run's last good one.
        if trainer.is_global_zero and not self.resuming:
            import shutil

            last = self.directory / "last.ckpt"
            shutil.rmtree(last) if last.is_dir() else last.unlink(missing_ok=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from rlhf_lab.resume import ResumableLoader

        loader = trainer.train_dataloader
        if isinstance(loader, ResumableLoader):
            loader.completed += 1
        if (batch_idx + 1) % self.every_n == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer)


@dataclass(frozen=True)
class TrainerPlan:
    """What a run's ``Trainer`` config asks for: how many processes, on which kind of device."""

    world_size: int
    device_type: str


MULTI_PROCESS_STRATEGIES = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false", "fsdp", "deepspeed")
"""Strategies a run may use with several processes (rank 0 starts the ranks, ``distributed.py``);
``fsdp`` is this project's fully sharded training (``sharding.py``), not Lightning's FSDP1 wrapper;
``deepspeed`` is ZeRO at ``trainer.zero_stage`` (``deepspeed_zero.py``)."""


def strategy_for(cfg: DictConfig, world_size: int):
    """The Lightning strategy ``trainer.strategy`` names (``fsdp``: FSDP2 over ``world_size`` processes)."""
    if cfg.trainer.strategy == "fsdp":
        from rlhf_lab.sharding import fsdp_strategy

        return fsdp_strategy(world_size)
    if cfg.trainer.strategy == "deepspeed":
        from rlhf_lab.deepspeed_zero import deepspeed_strategy

        return deepspeed_strategy(cfg.trainer.zero_stage, cpu=_on_cpu(cfg))
    return cfg.trainer.strategy


def _on_cpu(cfg: DictConfig) -> bool:
    import torch

    return cfg.trainer.accelerator == "cpu" or (cfg.trainer.accelerator == "auto" and not torch.cuda.is_available())


def matmul_gflops(dtype, size: int = 256, repeats: int = 4) -> float:
    """GFLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on this process's CPU threads."""
    import time

    import torch

    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / max(time.perf_counter() - start, 1e-9) / 1e9


def check_cpu_bf16(precision: str) -> None:
    """Refuse bf16 autocast on a CPU whose bf16 matmul is slower than its fp32 one.

    A CPU with bf16 instructions (AVX-512 BF16, AMX) runs a bf16 matmul about twice as fast as fp32;
    one without them (AVX2) emulates it, a hundred times slower, and every stage would crawl."""
    import torch

    from rlhf_lab.errors import RlhfLabError

    bf16, fp32 = matmul_gflops(torch.bfloat16), matmul_gflops(torch.float32)
    if bf16 < fp32:
        raise RlhfLabError(
            f"trainer.precision={precision}: this CPU ({torch.backends.cpu.get_cpu_capability()}) runs bf16 matmuls at "
            f"{bf16:.1f} GFLOP/s against {fp32:.0f} in fp32 (it has no bf16 instructions); use trainer.precision=32-true"
        )


def check_trainer_config(cfg: DictConfig) -> TrainerPlan:
    """Build a throwaway ``Trainer`` so a bad accelerator, device, precision or strategy fails before any work."""
    from lightning.pytorch import Trainer
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from rlhf_lab.errors import RlhfLabError

    from lightning.fabric.plugins.environments import LightningEnvironment

    t = cfg.trainer
    for ours in ("fsdp", "deepspeed"):
        if t.strategy != ours and t.strategy.startswith(ours):
            # Lightning's own variants (deepspeed_stage_3, fsdp_cpu_offload, ...) would run without the
            # stages' clipping, frozen-model sharding and consolidation.
            raise RlhfLabError(
                f"trainer.strategy={t.strategy} is Lightning's own; use trainer.strategy={ours}"
                + (" with trainer.zero_stage=1|2|3" if ours == "deepspeed" else "")
            )
    if t.strategy in ("fsdp", "deepspeed") and cfg.model.lora.r > 0:
        raise RlhfLabError(f"trainer.strategy={t.strategy} with LoRA (model.lora.r > 0): LoRA already keeps the trained state small; use trainer.strategy=ddp")
    if t.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise RlhfLabError("trainer.strategy=deepspeed needs DeepSpeed: pip install -e \".[deepspeed]\" (or pip install deepspeed)")
    try:
        trainer = Trainer(
            # (fsdp, deepspeed: the devices and processes are counted as for DDP; the sharding strategy is built per stage.)
            accelerator=t.accelerator, devices=t.devices, strategy="ddp" if t.strategy in ("fsdp", "deepspeed") else t.strategy, precision=t.precision,
            plugins=[LightningEnvironment()],  # the processes this config asks for, not those of a SLURM job around it
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        raise RlhfLabError(f"trainer: {exc} (trainer.accelerator={t.accelerator}, trainer.devices={t.devices}, trainer.precision={t.precision})") from None
    if t.strategy in ("fsdp", "deepspeed"):
        try:  # the precisions the sharding strategy takes, checked on the strategy each stage will use
            Trainer(accelerator=t.accelerator, devices=t.devices, strategy=strategy_for(cfg, trainer.world_size), precision=t.precision,
                    logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
            raise RlhfLabError(f"trainer.strategy={t.strategy}: {exc} (trainer.precision={t.precision})") from None
    if "bf16" in str(trainer.precision) and type(trainer.accelerator).__name__ == "CPUAccelerator":
        check_cpu_bf16(t.precision)
    if trainer.world_size > 1 and t.strategy not in MULTI_PROCESS_STRATEGIES:
        # Other launchers (spawn, fork) would start the ranks inside the first fit, past the pipeline's
        # own start of the ranks.
        raise RlhfLabError(
            f"trainer.strategy={t.strategy} with {trainer.world_size} processes: use one of {', '.join(MULTI_PROCESS_STRATEGIES)} "
            "(trainer=ddp), or one device"
        )
    return TrainerPlan(trainer.world_size, trainer.strategy.root_device.type)


def check_global_batches(cfg: DictConfig, world_size: int, keys: list[str]) -> None:
    """Batch sizes are global, split evenly over the ranks: each named key must divide by ``world_size``."""
    from rlhf_lab.errors import RlhfLabError

    for key in keys:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, int) and value % world_size:
            raise RlhfLabError(
                f"{key}={value} does not divide over {world_size} processes: batch sizes are global (each process "
                f"takes 1/{world_size} of every batch); use a multiple of {world_size}"
            )


def inference_device(cfg: DictConfig):
    """Where sampling and scoring outside a ``Trainer`` run: this rank's GPU if the trainer may use one."""
    import torch

    if cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        devices, local_rank = cfg.trainer.devices, int(os.environ.get("LOCAL_RANK", 0))
        index = int(devices[local_rank]) if isinstance(devices, (list, tuple, ListConfig)) else local_rank
        return torch.device("cuda", index)
    return torch.device("cpu")
