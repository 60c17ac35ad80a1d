"""The optimiser every training stage uses.

Kept apart from :mod:`rlhf_lab.training` (the Trainer recipe, which imports omegaconf and Lightning's
callbacks): a stage builds its optimiser inside ``Trainer.fit``, where only torch is needed.
"""

from __future__ import annotations


def adamw(params, lr: float, *, weight_decay: float = 0.0, eps: float = 1e-8):
    """AdamW for every stage, fused into one kernel per step where torch supports it for these
    parameters (CPU and CUDA floating point): on small models the per-parameter loop of the plain
    implementation is a tenth of an update's time. The maths is the same either way."""
    import torch

    # Frozen weights (LoRA's base) get no optimiser state; ``params`` may be tensors or param groups.
    params = [
        {**p, "params": [q for q in p["params"] if q.requires_grad]} if isinstance(p, dict) else p
        for p in params if isinstance(p, dict) or p.requires_grad
    ]
    try:
        return torch.optim.AdamW(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, eps=eps, weight_decay=weight_decay)
