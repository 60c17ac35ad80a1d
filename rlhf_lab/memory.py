"""Will the run fit? An estimate of the memory of the largest stage, checked before any work.

The estimate counts what is known before a single weight is loaded (the model is built on the
``meta`` device to count its parameters): weights of every network the policy stage holds (policy,
reference unless LoRA shares it, reward model, critic), gradients of the trainable weights and
AdamW's two moments. Activations and the KV cache come on top and depend on batch size and length,
so a run is refused only when even this lower bound does not fit; the message names the options
that would make it fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1024**3


def gib(n: int) -> str:
    """Bytes in GiB, to one decimal (three significant digits below 1 GiB)."""
    return f"{n / GIB:.1f}" if n >= GIB else f"{n / GIB:.3g}"


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


def estimate(parameters: int, trainable: int, dtype: str, *, reference: bool, reward_model: bool, critic: bool, shards: int = 1) -> MemoryEstimate:
    """Lower bound on the policy stage's memory on one device.

    :param trainable: parameters that train (all, or LoRA's adapters).
    :param reference: whether a separate reference copy is held (not with LoRA).
    :param shards: over how many devices every model is sharded (``trainer.strategy=fsdp``).
    """
    size = BYTES[dtype]
    # gradient + AdamW's exp_avg and exp_avg_sq, all in the parameters' dtype
    train_state = 3 * trainable * size
    parts = {"policy weights": parameters * size, "policy gradients and AdamW state": train_state}
    if reference:
        parts["reference weights"] = parameters * size
    if reward_model:
        parts["reward model weights"] = parameters * size
    if critic:
        parts["critic weights"] = parameters * size
        parts["critic gradients and AdamW state"] = train_state
    parts = {k: v // shards for k, v in parts.items()}
    weights = sum(v for k, v in parts.items() if k.endswith("weights"))
    return MemoryEstimate(parameters, weights, sum(parts.values()) - weights, parts)


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
