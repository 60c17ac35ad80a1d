"""Will the run fit? An estimate of each stage's memory, checked before any work.

Two figures per stage. The lower bound counts what is known before a single weight is loaded (the
model is built on the ``meta`` device to count its parameters): weights of every network the stage
holds (for the policy stage: policy, reference unless LoRA shares it, reward model, critic),
gradients of the trainable weights and AdamW's two moments. A run is refused only when even that does
not fit; the message names the options that would make it fit. The peak adds what depends on batch
size and length: the activations a training forward keeps for its backward (measured per token on a
two-layer copy of the model, :mod:`rlhf_lab.activation_memory`) at the largest batch the limits allow,
and for a policy stage the rollout's key/value cache; it is logged for every stage, with a warning
when it exceeds the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TRAINING_LOOP_BYTES = 100 * 2**20
"""What a training stage holds besides its models, their training state and the activations: the
Trainer's loop, the data loader and the allocator's slack. Measured on the benchmark's ladder, where at
the smallest shape (1m) it is a quarter of a stage's peak and above 25m it is lost in the rest."""

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1024**3


def gib(n: int) -> str:
    """Bytes in GiB, to one decimal (three significant digits below 1 GiB)."""
    return f"{n / GIB:.1f}" if n >= GIB else f"{n / GIB:.3g}"


def readable(n: int) -> str:
    """Bytes in GiB from 1 GiB up, else in MiB."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


@dataclass
class MemoryEstimate:
    """Bytes of the policy stage, by part."""

    parameters: int
    weights: int
    training_state: int
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return self.weights + self.training_state


def count_parameters(model_dir: str, lora=None) -> tuple[int, int]:
    """(parameters, trainable parameters) of the causal LM in ``model_dir``, counted on the meta
    device (nothing is loaded); trainable are the adapters' when ``lora`` settings are given."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        total = sum(p.numel() for p in model.parameters())
        if lora is None:
            return total, total
        from rlhf_lab.models.lora import add_policy_adapters

        adapted = add_policy_adapters(model, lora)
        return total, sum(p.numel() for p in adapted.parameters() if p.requires_grad)


def estimate(parameters: int, trainable: int, dtype: str, *, reference: bool, reward_model: int, critic: bool, shards: int = 1) -> MemoryEstimate:
    """Lower bound on the policy stage's memory on one device.

    :param trainable: parameters that train (all, or LoRA's adapters).
    :param reference: whether a separate reference copy is held (not with LoRA).
    :param reward_model: how many learned reward models are held (an ensemble's members; a bool counts 0 or 1).
    :param shards: over how many devices every model is sharded (``trainer.strategy=fsdp``).
    """
    size = BYTES[dtype]
    # gradient + AdamW's exp_avg and exp_avg_sq, all in the parameters' dtype
    train_state = 3 * trainable * size
    parts = {"policy weights": parameters * size, "policy gradients and AdamW state": train_state}
    if reference:
        parts["reference weights"] = parameters * size
    if reward_model:
        parts["reward model weights"] = int(reward_model) * parameters * size
    if critic:
        parts["critic weights"] = parameters * size
        parts["critic gradients and AdamW state"] = train_state
    parts = {k: v // shards for k, v in parts.items()}
    weights = sum(v for k, v in parts.items() if k.endswith("weights"))
    return MemoryEstimate(parameters, weights, sum(parts.values()) - weights, parts)


@dataclass
class StagePeak:
    """The estimated peak of one training stage, by part (bytes), and the batch shape it assumes."""

    stage: str
    parts: dict[str, int]
    shape: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        by_part = ", ".join(f"{k} {readable(v)}" for k, v in self.parts.items() if v)
        return f"{self.stage} {readable(self.total)} ({by_part}; {self.shape})"


def training_peak(stage: str, parameters: int, trainable: int, dtype: str, profile, *, rows: int, length: int,
                  read_tokens: int, checkpointing: bool = False, frozen_copies: int = 0) -> StagePeak:
    """Peak of a stage that trains one network on ``rows`` x ``length`` positions whose loss reads the
    logits at ``read_tokens`` of them (0: a scalar head), holding ``frozen_copies`` more networks of the
    same size (DPO's reference). ``profile`` None: activations left out (architecture not probed)."""
    size = BYTES[dtype]
    parts = {"weights": parameters * size * (1 + frozen_copies), "gradients and AdamW state": 3 * trainable * size,
             "activations": profile.training(rows, length, read_tokens, checkpointing) if profile else 0,
             "training loop": TRAINING_LOOP_BYTES}
    return StagePeak(stage, parts, f"{rows} x {length} positions")


def policy_stage_peak(est: MemoryEstimate, profile, critic_profile, *, rollout_rows: int, rollout_length: int,
                      update_rows: int, update_length: int, read_tokens: int, checkpointing: bool = False) -> StagePeak:
    """Peak of the policy stage: every network it holds and their training state (``est``), plus the
    larger of the rollout's key/value cache and an update's activations (policy, and critic if any)."""
    cache = profile.generation(rollout_rows, rollout_length) if profile else 0
    update = profile.training(update_rows, update_length, read_tokens, checkpointing, on_policy=True) if profile else 0
    if critic_profile is not None:
        update += critic_profile.training(update_rows, update_length, 0, checkpointing, on_policy=True)
    parts = {"weights": est.weights, "gradients and AdamW state": est.training_state,
             "rollout key/value cache" if cache >= update else "update activations": max(cache, update), "training loop": TRAINING_LOOP_BYTES}
    return StagePeak("policy", parts, f"rollouts {rollout_rows} x {rollout_length}, updates {update_rows} x {update_length}")


def device_memory_bytes(device) -> int:
    """Total memory of ``device``: the GPU's, or the machine's RAM for the CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def refusal(est: MemoryEstimate, available: int, device, dtype: str, lora: bool) -> str:
    """The error message: the estimate by part, the device's memory, and what would help."""
    by_part = ", ".join(f"{k} {gib(v)}" for k, v in est.parts.items())
    helps = []
    if not lora:
        helps.append("LoRA (model.lora.r=16: only adapters train, and the reference shares the policy's weights)")
    if dtype == "float32":
        helps.append("bf16 weights (model.dtype=bfloat16, trainer=gpu_bf16)")
    helps.append("sharding every model over several GPUs (trainer=fsdp)")
    helps.append("a smaller model")
    return (
        f"the policy stage needs at least {gib(est.total)} GiB ({est.parameters / 1e9:.3g}B parameters in {dtype}: "
        f"{by_part} GiB) before activations, but {device} has {gib(available)} GiB. Would help: {'; '.join(helps)}; "
        "smaller batches (algo.rollout_batch_size, algo.minibatch_size) reduce activations only"
    )
