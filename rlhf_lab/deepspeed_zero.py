"""DeepSpeed ZeRO (``trainer.strategy=deepspeed``): Lightning's ``DeepSpeedStrategy`` over the run's ranks.

ZeRO partitions the training state over the N processes: stage 1 the AdamW moments, stage 2 also the
gradients, stage 3 also the weights (``trainer.zero_stage``). DeepSpeed's engine wraps the stage's
``LightningModule`` and owns the backward, the gradient clipping (its ``gradient_clipping`` setting,
taken from the module's :meth:`~rlhf_lab.sharding.ShardedTraining.gradient_clip_norm`) and the step.
Its checkpoints are directories (each rank writes its partition): ``training.LastCheckpoint`` swaps
them in whole.

Under stage 3 the frozen models a policy step uses (reference, reward model) are partitioned too, as
copies in inference engines (no optimiser); the pipeline's own copies wait in host memory for rank 0's
evaluation. After a fit :func:`rlhf_lab.sharding.consolidated` gathers the trained model whole on rank 0.

DeepSpeed runs on the CPU as well (its CPU accelerator, gloo), which Lightning's strategy refuses:
:class:`ZeroStrategy` lifts that refusal so ``trainer=deepspeed_cpu`` runs the same engine without a
GPU, for trying and testing the path.
"""

from __future__ import annotations

import copy
import warnings

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import nn

CPU_ZERO = {
    "reduce_scatter": False,  # gloo has no reduce-scatter: gradients are all-reduced, then partitioned
    # Every weight partitioned, as a large model's are: DeepSpeed keeps tensors under 1e5 elements whole
    # on every rank, which on a toy model is all of them, and would leave ZeRO-3's gathering untried.
    "stage3_param_persistence_threshold": 0,
}
"""What the CPU path (trying and testing, on small models) changes in ZeRO's settings."""


def zero_config(stage: int, cpu: bool) -> dict:
    """The DeepSpeed config of a training engine (Lightning adds precision and accumulation)."""
    zero = {"stage": stage}
    if cpu:
        zero.update(CPU_ZERO)
    return {
        "zero_optimization": zero,
        # Only DeepSpeed's throughput log reads it; the loaders give the real (global) batch sizes.
        "train_micro_batch_size_per_gpu": 1,
        # The stages' torch AdamW (fused where it can be): DeepSpeed wraps any torch optimiser.
        "zero_allow_untested_optimizer": True,
    }


class ZeroStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` with the stage's clipping norm, quiet about clipping it does itself, and
    allowed on the CPU."""

    def __init__(self, stage: int, cpu: bool, **kwargs) -> None:
        super().__init__(config=zero_config(stage, cpu), **kwargs)
        self.stage, self.cpu = stage, cpu

    def setup_environment(self) -> None:
        if not self.cpu:
            return super().setup_environment()
        # DeepSpeed's CPU engine: every rank's device is the CPU (Lightning's would be an index-less
        # device, which DeepSpeed's engine cannot place).
        self.parallel_devices = [torch.device("cpu", 0)] * len(self.parallel_devices or [None])
        return super(DeepSpeedStrategy, self).setup_environment()  # DDP's set-up, past the CUDA-only check

    def setup_distributed(self) -> None:
        if not self.cpu:
            return super().setup_distributed()
        import deepspeed.ops
        from lightning.fabric.utilities.seed import reset_seed

        # DeepSpeed's shared-memory all-reduce for CPUs is a C++ extension it compiles at first use
        # (a compiler and half a minute): the CPU path is for trying and testing, gloo serves it.
        compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
        if isinstance(compatible, dict):
            compatible["deepspeed_shm_comm"] = False
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def setup(self, trainer) -> None:
        clip = getattr(trainer.lightning_module, "gradient_clip_norm", lambda: None)()
        self.config["gradient_clipping"] = float(clip or 0.0)
        super().setup(trainer)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        with warnings.catch_warnings():
            # "each worker will save a shard within a directory": LastCheckpoint swaps that directory in whole.
            warnings.filterwarnings("ignore", message=".*DeepSpeed Stage 3 checkpoint.*")
            super().save_checkpoint(checkpoint, filepath, storage_options)

    def init_deepspeed(self) -> None:
        with warnings.catch_warnings():
            # A module's configure_gradient_clipping serves the other strategies; here the engine clips
            # by the norm setup() gave it, so Lightning's warning that the hook will not clip is moot.
            warnings.filterwarnings("ignore", message=".*DeepSpeed handles gradient clipping internally.*")
            super().init_deepspeed()


def deepspeed_strategy(stage: int, cpu: bool) -> ZeroStrategy:
    """The Lightning strategy for ``trainer.strategy=deepspeed`` at ZeRO ``stage``."""
    return ZeroStrategy(stage, cpu)


def is_partitioned(model: nn.Module) -> bool:
    """Whether ``model``'s weights are partitioned by ZeRO stage 3 (each rank holds a slice)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def partitioned_copy(model: nn.Module, precision: str, cpu: bool) -> nn.Module:
    """A ZeRO-3 partitioned copy of a frozen model, for inference only (the original stays whole)."""
    import deepspeed

    config = {"zero_optimization": {"stage": 3, **(CPU_ZERO if cpu else {})}, "train_micro_batch_size_per_gpu": 1}
    if precision.startswith("bf16"):
        config["bf16"] = {"enabled": True}
    elif precision.startswith("16"):
        config["fp16"] = {"enabled": True}
    engine, *_ = deepspeed.initialize(model=copy.deepcopy(model), config=config)
    return engine.module.eval()


def gathered_state(model: nn.Module, is_main: bool) -> dict | None:
    """The whole state dict of a ZeRO-3 partitioned ``model`` on the main rank (None elsewhere); every
    rank must call it. One parameter is gathered at a time, so no rank ever holds the whole model on its
    device."""
    import deepspeed

    state, seen = {}, {}
    # Every name a state dict has (a module shared under two names, such as a value model's head, once per name).
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) not in seen:
            with deepspeed.zero.GatheredParameters([param]):
                seen[id(param)] = param.detach().to("cpu", copy=True) if is_main else None
        state[name] = seen[id(param)]
    if not is_main:
        return None
    state.update({name: buffer.detach().cpu() for name, buffer in model.named_buffers()})
    return state
