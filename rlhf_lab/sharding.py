"""Fully sharded training (``trainer.strategy=fsdp``): PyTorch's FSDP2 through Lightning's ``ModelParallelStrategy``;
and what every sharding strategy (FSDP, DeepSpeed ZeRO: ``deepspeed_zero.py``) shares: the
:class:`ShardedTraining` mixin and :func:`consolidated`.

Each rank holds 1/N of every trainable model's weights, gradients and AdamW moments; a layer's weights
are gathered for its forward and backward and freed after. A module that trains models mixes in
:class:`ShardedTraining` and names them; its ``configure_model`` (which Lightning calls inside the
strategy, once the device mesh exists) shards each transformer block, then the model, over the
data-parallel mesh. Frozen models the step uses (the reference, the reward model) are sharded too,
as copies: the pipeline's own copies stay whole, off the accelerator, for rank 0's evaluation.

Gradient clipping needs no strategy hook: ``torch.nn.utils.clip_grad_norm_`` on sharded (DTensor)
parameters computes the norm over all shards. After a fit, :func:`consolidated` gathers a sharded
model into one whole copy on rank 0, which saves and evaluates it (collective: every rank calls it).

Lightning's ``strategy="fsdp"`` (FSDP1, a wrapper around the whole module) is not used: it runs on
GPUs only, cannot clip by norm, and leaves the models wrapped after the fit.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
from torch import nn

FSDP = "fsdp"
"""The ``trainer.strategy`` value that selects fully sharded training."""


def fsdp_strategy(world_size: int):
    """The Lightning strategy for ``trainer.strategy=fsdp`` over ``world_size`` processes."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    # One full checkpoint file (gathered on rank 0): the same last.ckpt, resume and cache handling as
    # every other stage; a sharded checkpoint directory would not fit the atomic rename.
    return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=False)


def block_classes(model: nn.Module) -> set[str]:
    """Class names of the model's transformer blocks (transformers declares them as ``_no_split_modules``)."""
    return {name for sub in model.modules() for name in (getattr(sub, "_no_split_modules", None) or ())}


def shard(model: nn.Module, mesh) -> nn.Module:
    """Shard ``model`` in place over ``mesh``: each transformer block its own unit, then the rest."""
    from torch.distributed.fsdp import fully_shard

    blocks = block_classes(model)
    for sub in model.modules():
        if sub is not model and type(sub).__name__ in blocks:
            fully_shard(sub, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A reduced figure of sharded tensors (a gradient norm) as a plain tensor."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def consolidated(model: nn.Module, build: Callable[[], nn.Module], rebuild: bool = False) -> Optional[nn.Module]:
    """``model`` itself if it is whole on every rank (and not ``rebuild``); else its weights gathered
    into ``build()`` (an unsharded model of the same architecture, in the run's dtype) on rank 0, and
    None on the other ranks. Every rank must call it.

    ``rebuild``: a model DeepSpeed trained is whole under ZeRO 1-2, but its engine cast it to the
    training precision and keeps hooks on it: rank 0 copies its weights into a plain model."""
    from rlhf_lab.deepspeed_zero import gathered_state, is_partitioned

    if not is_sharded(model) and not is_partitioned(model) and not rebuild:
        return model
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    elif is_partitioned(model):
        state = gathered_state(model, is_main=rank == 0)
    else:
        state = model.state_dict() if rank == 0 else None
    if rank != 0:
        return None
    out = build()
    missing, unexpected = out.load_state_dict(state, strict=False)
    tied = set(getattr(out, "_tied_weights_keys", None) or ())
    if unexpected or any(key not in tied for key in missing):
        raise RuntimeError(f"gathering the sharded model: missing {missing}, unexpected {unexpected}")
    return out


class ShardedTraining:
    """Mixin for a stage's ``LightningModule``: under ``trainer.strategy=fsdp`` its models are sharded
    in ``configure_model``; under ``trainer.strategy=deepspeed`` DeepSpeed's engine partitions them (and,
    at ZeRO stage 3, :meth:`partition_frozen` the frozen ones); under any other strategy nothing changes.

    ``_sharded`` is true when each rank holds only a slice of the weights (FSDP, ZeRO-3): a forward
    then gathers weights with the other ranks, so every rank must take the same forwards (lockstep).
    """

    def sharded_models(self) -> list[nn.Module]:
        """The trained models, sharded in place (by default the module's ``model``)."""
        return [self.model] if isinstance(getattr(self, "model", None), nn.Module) else []

    def shard_frozen(self, copy_sharded: Callable[[nn.Module], nn.Module]) -> None:
        """Replace the frozen models the step uses by ``copy_sharded(model)`` (override where there are some)."""

    def gradient_clip_norm(self) -> Optional[float]:
        """The norm DeepSpeed's engine, which clips by itself, clips the gradients to (None: no clipping)."""
        return None

    @property
    def uses_deepspeed(self) -> bool:
        """Whether DeepSpeed's engine runs the backward, the clipping and the step."""
        from rlhf_lab.deepspeed_zero import ZeroStrategy

        return self._trainer is not None and isinstance(self._trainer.strategy, ZeroStrategy)

    def configure_model(self) -> None:
        if getattr(self, "_sharded", False):
            return
        if self.uses_deepspeed:
            # The engine partitions the trained models when the strategy sets up, after this hook.
            self._sharded = self._trainer.strategy.stage == 3
            return
        mesh = self.device_mesh
        if mesh is None:
            return
        mesh = mesh["data_parallel"]
        for model in self.sharded_models():
            shard(model, mesh)
        self.shard_frozen(lambda model: sharded_copy(model, mesh))
        self._sharded = True

    def partition_frozen(self) -> None:
        """Under ZeRO stage 3, replace the frozen models by partitioned copies; call once the engine is
        set up (``on_fit_start``: the models are created outside ``configure_model``'s ``zero.Init``)."""
        if self.uses_deepspeed and self._sharded and not getattr(self, "_frozen_partitioned", False):
            from rlhf_lab.deepspeed_zero import partitioned_copy

            precision, cpu = str(self._trainer.precision), self._trainer.strategy.cpu
            self.shard_frozen(lambda model: partitioned_copy(model, precision, cpu))
            self._frozen_partitioned = True


def sharded_copy(model: nn.Module, mesh) -> nn.Module:
    """A sharded copy of a frozen model (the original stays whole for evaluation)."""
    return shard(copy.deepcopy(model), mesh)
