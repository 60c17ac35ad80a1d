"""The run context: what every builder of one run shares, fixed before the first stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlhf_lab.run.plan import Plan
from rlhf_lab.run.store import Store


@dataclass(frozen=True)
class RunContext:
    """The surroundings of a run's stages. Nothing in it changes once the stages start: stages pass
    each other only the artifacts the resolver hands over.

    :param plan: the run's plan (config, settings, components, route).
    :param run_dir: the run directory; ``group``: the logger group (the sweep's, in a multirun).
    :param store: the artifact cache, with the rank protocol.
    :param trainer_plan: processes and device type (:class:`rlhf_lab.training.TrainerPlan`).
    :param task: the task, its prompts and demonstrations fitted to the length limits by the pre-flight.
    :param tokenizer: the starting model's tokenizer.
    :param limits: the length limits when ``data.truncate`` cuts, else None.
    :param feedback: the feedback source, where the route collects preferences.
    :param reward: the reward component, where the algorithm consumes a reward.
    :param judge: the evaluation's AI judge (``eval.judge``), else None.
    """

    plan: Plan
    run_dir: Path
    group: str
    store: Store
    trainer_plan: Any
    task: Any
    tokenizer: Any
    limits: Optional[Any] = None
    feedback: Any = None
    reward: Any = None
    judge: Any = None

    @property
    def cfg(self):
        return self.plan.cfg

    @property
    def ranks(self):
        return self.store.ranks

    @property
    def dtype(self) -> str:
        return self.plan.settings["model"].dtype

    def key_fields(self) -> dict:
        """The cache-key fields every trained artifact shares: what changes its numbers besides its own config."""
        return {"dtype": self.dtype, "precision": self.cfg.trainer.precision, "seed": self.cfg.seed, "lora": self.plan.section("model")["lora"]}

    def inference_device(self):
        """Where sampling and scoring outside a ``Trainer`` run."""
        from rlhf_lab.training import inference_device

        return inference_device(self.cfg)

    def frozen_device(self):
        """Where the frozen reference and reward function wait: the accelerator, or when training shards
        the weights host memory (training shards copies of them; rank 0 moves them to the accelerator to evaluate)."""
        import torch

        return torch.device("cpu") if self.plan.shards_weights else self.inference_device()

    def trainer_stage(self, artifact: str, round_: int = 1) -> str:
        """The name of the ``Trainer`` stage that builds ``artifact`` (checkpoints, loggers, hooks):
        the artifact's own name, with ``_round<r>`` for loop rounds after the first."""
        return artifact if round_ == 1 else f"{artifact}_round{round_}"
