"""``task=dataset``: prompts, demonstrations and reference answers from the user's own files.

A row gives a prompt and, optionally, a demonstration (the response SFT trains on) and a reference
answer (what evaluation compares responses with, by BLEU and ROUGE-L). The columns are recognised in
this order:

- ``messages``: a chat (``[{"role", "content"}, ...]``); the prompt is the conversation before the
  last message, the demonstration that message when it is the assistant's (else the whole chat is
  the prompt). Rendered by :mod:`rlhf_lab.chat`.
- ``prompt`` (text or messages), with optional ``response`` and ``reference``.
- a preference file (any format of :mod:`rlhf_lab.preference_formats`): its prompts, and its preferred
  responses as demonstrations, so one HH-RLHF file can drive SFT, the reward model and PPO.

Held-out rows come from ``heldout_path`` or a seeded ``heldout_fraction`` of ``path``. The task has no
hidden utility, so evaluation reports no gold reward: use a reward model or a rule.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Optional

from rlhf_lab import hookimpl
from rlhf_lab.chat import check_messages, load_chat_tokenizer, render_prompt, split_reply
from rlhf_lab.datafiles import FileSourceConfig, Table, check_mapped_columns, read_table
from rlhf_lab.errors import DataError, RlhfLabError
from rlhf_lab.preference_formats import parse_preferences
from rlhf_lab.tasks.base import Task

@dataclass
class TaskColumns:
    """The file's column names for each role (null: the role's own name)."""

    prompt: Optional[str] = None
    """Prompt text, or a message list."""
    response: Optional[str] = None
    """Demonstration that SFT trains on."""
    reference: Optional[str] = None
    """Reference answer that evaluation compares responses with."""
    messages: Optional[str] = None
    """A chat: the last assistant message is the demonstration, the messages before it the prompt."""


@dataclass
class DatasetTaskConfig(FileSourceConfig):
    """Schema of ``task=dataset``."""

    group: ClassVar[str] = "task"

    path: Optional[str] = None
    """Prompt file (.jsonl, .json, .csv, .parquet), ``save_to_disk`` directory or hub name (required)."""
    heldout_path: Optional[str] = None
    """Held-out prompts for evaluation (and demonstrations for perplexity); null: a seeded ``heldout_fraction`` of ``path``."""
    columns: TaskColumns = field(default_factory=TaskColumns)
    """Column names, for files that name them otherwise: ``task.columns.prompt=question``."""
    max_rows: Optional[int] = None
    """Use at most this many rows of ``path`` (null: all)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"task.max_rows must be >= 1 or null, got {self.max_rows}")


@dataclass
class Example:
    """One row: a prompt, and optionally a demonstration and a reference answer."""

    prompt: str
    response: Optional[str] = None
    reference: Optional[str] = None
    where: str = ""
    """``file:line`` (or ``file: row n``) the row came from."""


def read_examples(table: Table, columns: Optional[dict] = None, on_bad_record: str = "error", chat_tokenizer=None) -> tuple[list[Example], int]:
    """The examples of ``table`` and how many rows were skipped (``on_bad_record="skip"``)."""
    check_mapped_columns(table, columns, "task")
    rename = {theirs: ours for ours, theirs in (columns or {}).items() if theirs}
    rows = [{rename.get(k, k): v for k, v in row.items()} for row in table.rows] if rename else table.rows
    present = {k for row in rows for k, v in row.items() if v is not None}
    if not present & {"prompt", "messages"} and not {"chosen", "rejected"} <= present:
        raise DataError(
            f"{table.source}: no 'prompt' or 'messages' column (columns: {sorted(present)}); "
            "map yours with task.columns.prompt=<column>, or give a preference file (chosen/rejected)"
        )
    if {"chosen", "rejected"} <= present or "responses" in present:
        records, skipped = parse_preferences(table, "auto", {}, on_bad_record, chat_tokenizer, group="task")
        best = [r.ranking[0] if r.ranking is not None else max(range(len(r.scores)), key=r.scores.__getitem__) for r in records]
        folder = os.path.dirname(table.source)  # records name their file without its folder
        examples = [Example(r.prompt, r.responses[b], where=os.path.join(folder, r.meta["source"])) for r, b in zip(records, best)]
        return examples, sum(skipped.values())
    examples, skipped = [], 0
    for index, row in enumerate(rows):
        try:
            example = _example(row, chat_tokenizer)
            example.where = table.where(index)
            examples.append(example)
        except (ValueError, TypeError) as exc:
            if on_bad_record == "error":
                raise DataError(f"{table.where(index)}: malformed row: {exc} (task.on_bad_record=skip skips such rows)") from None
            skipped += 1
    if not examples:
        raise DataError(f"{table.source}: no usable rows ({skipped} skipped)")
    return examples, skipped


def _optional_text(row: dict, name: str) -> Optional[str]:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be text, got {type(value).__name__}")
    return value.strip() or None


def _example(row: dict, chat_tokenizer) -> Example:
    if row.get("messages") is not None:
        before, reply = split_reply(row["messages"], "messages")
        if not before:
            raise ValueError("'messages' holds only the assistant's reply")
        return Example(render_prompt(before, chat_tokenizer), reply or None, _optional_text(row, "reference"))
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        prompt = render_prompt(check_messages(prompt, "prompt"), chat_tokenizer)
    elif not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"'prompt' must be non-empty text or messages, got {prompt!r}")
    return Example(prompt.strip(), _optional_text(row, "response"), _optional_text(row, "reference"))


def make_dataset_task(cfg: DatasetTaskConfig, seed: int) -> Task:
    """Read the files and split them (seeded) into training and held-out examples."""
    if not cfg.path:
        raise RlhfLabError("task=dataset needs task.path=<file> (prompts, optionally responses and references)")
    chat = load_chat_tokenizer(cfg.chat_tokenizer, "task.chat_tokenizer")
    columns = asdict(cfg.columns)
    examples, skipped = read_examples(read_table(cfg.path, "task.path", cfg.split), columns, cfg.on_bad_record, chat)
    if cfg.max_rows:
        examples = examples[: cfg.max_rows]
    if cfg.heldout_path:
        train = examples
        held, skipped_held = read_examples(read_table(cfg.heldout_path, "task.heldout_path", "test"), columns, cfg.on_bad_record, chat)
        skipped += skipped_held
    else:
        # Split by prompt, not by row: a prompt with several demonstrations stays on one side.
        prompts = list(dict.fromkeys(e.prompt for e in examples))
        random.Random(seed).shuffle(prompts)
        n_held = max(1, int(len(prompts) * cfg.heldout_fraction))
        if len(prompts) - n_held < 1:
            raise DataError(f"{cfg.path}: {len(prompts)} distinct prompt(s) cannot be split into training and held-out prompts")
        held_prompts = set(prompts[:n_held])
        train = [e for e in examples if e.prompt not in held_prompts]
        held = [e for e in examples if e.prompt in held_prompts]
    return Task(
        train_prompts=list(dict.fromkeys(e.prompt for e in train)),
        eval_prompts=list(dict.fromkeys(e.prompt for e in held)),
        sft_train=[(e.prompt, e.response) for e in train if e.response],
        sft_eval=[(e.prompt, e.response) for e in held if e.response],
        references={e.prompt: e.reference for e in held if e.reference},
        sources={e.prompt: e.where for e in reversed(examples + (held if cfg.heldout_path else []))},
        stats={"task/skipped_rows": skipped},
        sized_to_data=True,
    )


@hookimpl
def rlhf_lab_register_tasks(register):
    register("dataset", make_dataset_task, DatasetTaskConfig)
