"""Configuration of the direct preference family (``algo=dpo``); the algorithm is :mod:`rlhf_lab.algos.dpo`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rlhf_lab.config import check_step_limit

DPO_LOSSES = ("sigmoid", "cdpo", "ipo", "simpo")


@dataclass
class DPOConfig:
    """Schema of ``algo=dpo``. Defaults suit the toy task; the paper value is given where it differs."""

    name: str = "dpo"
    loss: str = "sigmoid"
    """sigmoid (DPO; Rafailov et al. 2023), cdpo (conservative DPO, label smoothing; Mitchell 2023),
    ipo (Azar et al. 2023) or simpo (reference-free, length-normalised, with a margin; Meng et al. 2024)."""
    beta: float = 0.1
    """Strength of the implicit KL constraint (Rafailov et al.: 0.1; SimPO: 2.0-2.5; IPO: tau)."""
    label_smoothing: float = 0.1
    """cdpo only: probability that a preference label is flipped (Mitchell 2023: 0.1-0.3)."""
    simpo_gamma: float = 0.05
    """simpo: target reward margin gamma (Meng et al.: gamma/beta about 0.5, with beta 2.0-2.5)."""
    lr: float = 1e-4
    """AdamW learning rate (Rafailov et al.: 1e-6 for billion-parameter models)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    epochs: int = 2
    """Passes over the preference pairs."""
    batch_size: int = 64
    """Preference pairs per gradient step (chosen and rejected go through one forward)."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm."""
    max_steps: Optional[int] = None
    """Stop after this many gradient steps, or at the end of ``epochs``, whichever comes first (null:
    ``epochs`` alone). On real data an epoch can take hours: this bounds a run without shrinking the data."""
    group_by_length: bool = True
    """Fill each batch with pairs of similar length (as ``sft.group_by_length``): far less padding on
    real data; every pair is still seen once an epoch. false: plain shuffled batches."""

    def __post_init__(self) -> None:
        if self.loss not in DPO_LOSSES:
            raise ValueError(f"algo.loss must be one of {', '.join(DPO_LOSSES)}, got '{self.loss}'")
        if self.beta <= 0 or self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.max_grad_norm <= 0:
            raise ValueError("algo needs beta > 0, lr > 0, epochs >= 1, batch_size >= 1 and max_grad_norm > 0")
        if self.weight_decay < 0 or self.simpo_gamma < 0:
            raise ValueError(f"algo.weight_decay and algo.simpo_gamma must be >= 0, got {self.weight_decay} and {self.simpo_gamma}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"algo.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        check_step_limit(self.max_steps, "algo.max_steps")
