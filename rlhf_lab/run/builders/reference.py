"""The reference: the SFT policy, frozen, in memory; the KL anchor of training and evaluation alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from rlhf_lab.run.store import Artifact


@dataclass(frozen=True)
class Reference:
    """The frozen reference, and with LoRA the policy to train.

    :param model: the frozen SFT policy (eval mode, no gradients).
    :param trainable: with LoRA, the SFT policy with fresh adapters: the reference is that network with
        its adapters off, one copy of the base weights for both; else None (the algorithm loads its own).
    """

    model: Any
    trainable: Optional[Any] = None


def build(run, sft: Artifact) -> Reference:
    """The SFT policy, frozen, on the inference device (host memory when training shards the weights)."""
    from rlhf_lab.models.loading import load_policy

    lora = run.plan.lora
    if lora is not None:
        from rlhf_lab.models.lora import AdapterDisabled, add_policy_adapters

        policy = load_policy(str(sft.path), run.dtype, key=f"policy {sft.path}")
        trainable = add_policy_adapters(policy, lora).to(run.inference_device())
        return Reference(AdapterDisabled(trainable), trainable)
    model = load_policy(str(sft.path), run.dtype, key=f"reference {sft.path}")
    return Reference(model.eval().requires_grad_(False).to(run.frozen_device()))
