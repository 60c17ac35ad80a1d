"""What the pipeline hands an algorithm factory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlhf_lab.models.value_model import RewardNormaliser


@dataclass
class AlgoContext:
    """Inputs of the policy-optimisation stage.

    :param policy_path: ``save_pretrained`` directory of the starting (SFT) policy; also the reference.
    :param reward_path: directory of the trained reward model, or None for algorithms that need none.
    :param normaliser: maps raw reward-model scores to mean 0 / std 1 on SFT samples.
    :param tokenizer: the policy's tokenizer.
    :param train_prompts: prompts to optimise on.
    """

    policy_path: Path
    reward_path: Optional[Path]
    normaliser: RewardNormaliser
    tokenizer: Any
    train_prompts: list[str]
    seed: int
    dtype: str = "float32"
    checkpoint_dir: Optional[Path] = None
