"""LoRA adapters (through ``peft``) for the policy, the critic and the reward model.

With ``model.lora.r > 0``:

- SFT trains adapters on the base model and saves the merged weights, so every later stage loads a
  plain transformers model.
- Policy optimisation wraps the SFT policy in fresh adapters; the reference is the *same* network
  with its adapters disabled (:class:`AdapterDisabled`), so policy and reference share one copy of
  the frozen base weights. The saved policy is the adapter directory (``<run dir>/policy``, which
  ``peft`` loads onto the SFT policy it names); ``model.lora.merge=true`` also writes merged weights
  that plain transformers loads (``<run dir>/policy_merged``).
- A critic or a reward model (a backbone with a scalar head) gets adapters in its backbone while its
  head trains in full; the reward model is saved with its adapters merged.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
from torch import nn


def _peft_config(cfg, task_type: Optional[str], model: nn.Module):
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type=task_type,
        target_modules=list(cfg.target_modules) if cfg.target_modules else None,
        # GPT-2's projections are Conv1D, which store the weight transposed: peft must know (it would
        # otherwise correct the setting itself and warn on every run).
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in model.modules()),
    )


def add_policy_adapters(model, cfg):
    """The causal LM wrapped in trainable LoRA adapters (a ``peft`` model; base weights frozen)."""
    from peft import get_peft_model

    from rlhf_lab.errors import RlhfLabError

    try:
        peft_model = get_peft_model(model, _peft_config(cfg, "CAUSAL_LM", model))
    except ValueError as exc:  # e.g. target modules the architecture does not have
        raise RlhfLabError(f"model.lora: {str(exc).splitlines()[0]}") from None
    # The saved adapter names its base by this path: a relative one (a relative cache_dir) would load
    # only from the directory the run started in.
    for adapter in peft_model.peft_config.values():
        base = adapter.base_model_name_or_path
        if base and not os.path.isabs(base) and os.path.isdir(base):
            adapter.base_model_name_or_path = os.path.abspath(base)
    return peft_model


def add_value_adapters(value_model, cfg) -> None:
    """LoRA adapters in a :class:`~rlhf_lab.models.value_model.ValueModel`'s backbone, in place: the
    backbone's own weights are frozen, the adapters and the scalar head train."""
    from peft import inject_adapter_in_model

    backbone = value_model.model.base_model
    inject_adapter_in_model(_peft_config(cfg, None, backbone), backbone)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_("lora_" in name)
    value_model.head.requires_grad_(True)


def merge_value_adapters(value_model) -> None:
    """Fold a value model's backbone adapters into its weights and remove them, so that it saves as
    (and plain transformers loads) an ordinary model."""
    from peft.tuners.lora import LoraLayer

    backbone = value_model.model.base_model
    for name, module in list(backbone.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = backbone.get_submodule(parent_name) if parent_name else backbone
            setattr(parent, child, module.get_base_layer())


def merged_copy(peft_model):
    """Plain transformers model with the adapters folded in (the adapter model is left as it was)."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


class AdapterDisabled(nn.Module):
    """The reference policy as a view of a LoRA policy: the same network with its adapters off.

    It owns no parameters of its own (the policy is held outside the module tree, so the optimiser
    and Lightning never see it twice), never computes gradients, and ignores ``train``/``eval`` and
    ``requires_grad_`` calls, which would otherwise reach the policy's adapters.
    """

    def __init__(self, peft_model) -> None:
        super().__init__()
        self._policy = [peft_model]
        self.config = peft_model.get_base_model().config

    def forward(self, **kwargs: Any):
        # Passed on as given: naming arguments here (past_key_values, renamed cache in transformers 5.25)
        # would send deprecated names the caller never used.
        policy = self._policy[0]
        with torch.no_grad(), policy.disable_adapter():
            return policy(**kwargs)

    def get_base_model(self):
        """The network under the adapters (what callers inspect for its forward's arguments)."""
        return self._policy[0].get_base_model()

    def parameters(self, recurse: bool = True):
        return self._policy[0].parameters(recurse)

    def train(self, mode: bool = True) -> "AdapterDisabled":
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "AdapterDisabled":
        return self

    def to(self, *args, **kwargs) -> "AdapterDisabled":
        return self  # it moves with the policy

    def cpu(self) -> "AdapterDisabled":
        return self


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass instead of storing them (transformers renamed the
    method to ``activation_checkpointing_enable``; older versions only have the first name)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    enable()
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # with frozen embeddings (LoRA), checkpointed blocks still need a grad path
