"""What the run hands an algorithm factory: the artifacts it declared in ``consumes`` (names from
:data:`rlhf_lab.components.CONSUMABLE`), and the basics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

@dataclass
class AlgoInputs:
    """Inputs of the policy-optimisation stage.

    :param sft: ``save_pretrained`` directory of the SFT policy: where training starts.
    :param reference: the frozen SFT policy in memory (eval mode, no grads), shared with evaluation.
    :param tokenizer: the policy's tokenizer.
    :param prompts: training prompts.
    :param checkpoint_dir: where the stage's ``last.ckpt`` goes (named in NaN errors).
    :param reward: the run-time reward function, if the algorithm consumes ``reward``.
    :param preferences: directory with ``train.jsonl`` and ``heldout.jsonl`` preference records, if the
        algorithm consumes ``preferences``.
    """

    sft: Path
    reference: Any
    tokenizer: Any
    prompts: list[str]
    seed: int
    dtype: str = "float32"
    checkpoint_dir: Optional[Path] = None
    reward: Any = None
    preferences: Optional[Path] = None
    policy: Any = None
    """The trainable policy when the pipeline built it (LoRA: the reference is a view of it); else None."""
    lora: Any = None
    """``model.lora`` (:class:`~rlhf_lab.config.LoraSettings`) when adapters are on, else None."""
    gradient_checkpointing: bool = False

    def load_policy(self):
        """The policy to train: the one the pipeline built, else the SFT policy loaded from disk."""
        from rlhf_lab.models.lora import enable_gradient_checkpointing
        from rlhf_lab.models.loading import load_policy

        policy = self.policy if self.policy is not None else load_policy(str(self.sft), self.dtype, key=f"policy {self.sft}")
        if self.gradient_checkpointing:
            enable_gradient_checkpointing(policy)
        return policy
