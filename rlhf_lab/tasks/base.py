"""The task contract: the prompts, demonstrations and (optionally) hidden utility of one experiment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Task:
    """What a task gives the pipeline.

    :param train_prompts: prompts for feedback collection and policy optimisation.
    :param eval_prompts: held-out prompts for reward-model accuracy and the final evaluation.
    :param sft_train: (prompt, response) demonstrations for supervised fine-tuning.
    :param sft_eval: held-out demonstrations, used for validation loss and perplexity.
    :param utility: the hidden gold utility ``utility(prompt, response) -> float`` where the task
        knows one (simulated annotators and gold evaluation need it), else None.
    :param references: reference answers of held-out prompts (prompt -> text), for BLEU and ROUGE-L.
    :param sources: where each prompt came from (prompt -> ``file:line``), for error messages.
    :param stats: counts the task reports as metrics (e.g. rows skipped while reading).
    :param build_base_model: writes a tokenizer and an untrained causal LM with ``save_pretrained``
        into the given directory, for tasks that ship no model (None: ``model.name_or_path`` is required).
    :param sized_to_data: real data: lengths, epochs and episodes the user leaves unset are read off
        this task's prompts and demonstrations (:mod:`rlhf_lab.run.sizing`) instead of the engine's
        defaults, which are the toy task's.
    """

    train_prompts: list[str]
    eval_prompts: list[str]
    sft_train: list[tuple[str, str]]
    sft_eval: list[tuple[str, str]]
    utility: Optional[Callable[[str, str], float]] = None
    build_base_model: Optional[Callable[[Path], None]] = None
    references: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    sized_to_data: bool = False
