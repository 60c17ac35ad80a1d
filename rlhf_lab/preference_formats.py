"""Preference data in the formats people publish, turned into :class:`PreferenceRecord` s.

=============  ===================================================  ==========================================
format         columns                                              example row
=============  ===================================================  ==========================================
``native``     prompt, responses, ranking and/or scores             ``{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}``
               (annotator, meta, response_ids optional)             (K-wise rankings and ratings of K responses)
``pairwise``   prompt, chosen, rejected (text)                      ``{"prompt": "p", "chosen": "a", "rejected": "b"}``
``hh``         chosen, rejected: whole Anthropic HH-RLHF            ``{"chosen": "\\n\\nHuman: p\\n\\nAssistant: a", "rejected": ...}``
               transcripts; the prompt is their shared prefix up
               to the last ``Assistant:``, the responses the final
               turns that differ
``chat``       chosen, rejected: message lists; prompt optional     ``{"chosen": [{"role": "user", ...}, {"role": "assistant", ...}], ...}``
               (a message list or text). Without a prompt the
               conversations must agree up to their last message
``rating``     prompt, response, score: one rated response per      ``{"prompt": "p", "response": "a", "score": 6.5}``
               row; rows with the same prompt become one record
=============  ===================================================  ==========================================

The format is detected from the columns (:func:`detect_format`) or named in config; a column with
another name is mapped with ``feedback.columns.<name>=<column>``. Message-list prompts are rendered by
:mod:`rlhf_lab.chat`. A malformed row raises :class:`~rlhf_lab.errors.DataError` naming its
``file:line`` and what is wrong, or, with ``on_bad_record="skip"``, is skipped and counted by reason.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Callable, Optional

from rlhf_lab.chat import check_messages, render_prompt, split_reply
from rlhf_lab.datafiles import Table, check_mapped_columns
from rlhf_lab.errors import DataError
from rlhf_lab.records import PreferenceRecord

FORMATS = ("native", "pairwise", "hh", "chat", "rating")
HH_ASSISTANT = "\n\nAssistant:"
NATIVE_FIELDS = set(PreferenceRecord.__dataclass_fields__)


def detect_format(columns: set[str], first_row: dict, group: str = "feedback") -> str:
    """The format whose columns ``columns`` has; ``ValueError`` listing what each format needs (and the
    ``<group>.columns`` key that maps other names)."""
    if {"prompt", "responses"} <= columns and columns & {"ranking", "scores"}:
        return "native"
    if {"chosen", "rejected"} <= columns:
        if isinstance(first_row.get("chosen"), list):
            return "chat"
        return "pairwise" if "prompt" in columns else "hh"
    if {"prompt", "response", "score"} <= columns:
        return "rating"
    raise ValueError(
        f"columns {sorted(columns)} match no preference format: native (prompt, responses, ranking|scores), "
        "pairwise (prompt, chosen, rejected), hh (chosen, rejected transcripts), chat (chosen, rejected message "
        "lists) or rating (prompt, response, score). "
        + ("Rename the columns to one of these" if group.startswith("--") else f"Map other names with {group}.columns.<name>=<column>")
    )


class BadRecords:
    """What to do with a malformed row: raise (``"error"``) or skip and count it (``"skip"``). ``group`` is
    the config group whose ``on_bad_record`` decides (``feedback``, or ``task`` for a task read from a
    preference file), or a command's option (``--on-bad-record``): what the error tells the user to set."""

    def __init__(self, policy: str, group: str = "feedback") -> None:
        self.setting = group if group.startswith("--") else f"{group}.on_bad_record"
        if policy not in ("error", "skip"):
            raise ValueError(f"{self.setting} must be error or skip, got '{policy}'")
        self.policy = policy
        self.skipped: Counter = Counter()

    def handle(self, where: str, problem: str) -> None:
        if self.policy == "error":
            raise DataError(f"{where}: malformed preference record: {problem} ({self.setting}=skip skips such rows)")
        self.skipped[problem] += 1


def parse_preferences(
    table: Table, fmt: str = "auto", columns: Optional[dict] = None, on_bad_record: str = "error", chat_tokenizer=None,
    group: str = "feedback",
) -> tuple[list[PreferenceRecord], Counter]:
    """The records in ``table`` and the count of skipped rows by problem.

    :param fmt: one of :data:`FORMATS`, or ``auto`` to detect it from the columns.
    :param columns: ``{our name: column name}`` for columns named otherwise.
    :param chat_tokenizer: renders message-list prompts with its chat template (None: plain template).
    :param group: the config group that reads the file (``feedback``, ``task``), or a command's
        option prefix (``--``): errors name its keys.
    """
    check_mapped_columns(table, columns, group)
    rename = {theirs: ours for ours, theirs in (columns or {}).items() if theirs}
    rows = [{rename.get(k, k): v for k, v in row.items()} for row in table.rows] if rename else table.rows
    # datasets gives every row every column (None where a line lacks it): a column is present if any row fills it.
    present = {k for row in rows for k, v in row.items() if v is not None}
    if fmt == "auto":
        try:
            fmt = detect_format(present, rows[0], group)
        except ValueError as exc:
            raise DataError(f"{table.source}: {exc}") from None
    elif fmt not in FORMATS:
        raise DataError(f"{group}.format must be auto or one of {list(FORMATS)}, got '{fmt}'")
    bad = BadRecords(on_bad_record, group)
    render = lambda messages: render_prompt(messages, chat_tokenizer)  # noqa: E731
    if fmt == "rating":
        records = _ratings(table, rows, bad)
    else:
        parse = {"native": _native, "pairwise": _pairwise, "hh": _hh, "chat": _chat}[fmt]
        records = []
        for index, row in enumerate(rows):
            try:
                record = parse(row, render)
                record.validate()
            except (ValueError, TypeError, KeyError) as exc:
                bad.handle(table.where(index), str(exc))
                continue
            record.meta = {**record.meta, "source": os.path.basename(table.where(index))}
            records.append(record)
    if not records:
        raise DataError(f"{table.source}: no usable preference records ({sum(bad.skipped.values())} skipped: {dict(bad.skipped)})")
    return records, bad.skipped


def _text(row: dict, name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"empty '{name}'")
    return value.strip()


def _prompt(row: dict, render: Callable) -> str:
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        return render(check_messages(prompt, "prompt"))
    return _text(row, "prompt")


def _distinct(chosen: str, rejected: str) -> None:
    if chosen == rejected:
        raise ValueError("identical chosen and rejected responses")


def _native(row: dict, render: Callable) -> PreferenceRecord:
    unknown = {k for k, v in row.items() if v is not None} - NATIVE_FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}")
    fields = {k: v for k, v in row.items() if v is not None}
    if isinstance(fields.get("meta"), dict):
        fields["meta"] = {k: v for k, v in fields["meta"].items() if v is not None}
    fields["prompt"] = _prompt(row, render)
    record = PreferenceRecord(**fields)
    record.validate()
    # Sampled candidates may repeat a response, but a file's record must say something.
    for index, response in enumerate(record.responses):
        if not response.strip():
            raise ValueError(f"response {index} is empty")
    if len(record.responses) > 1 and len(set(record.responses)) == 1:
        raise ValueError("all responses are identical: the record prefers nothing")
    return record


def _pairwise(row: dict, render: Callable) -> PreferenceRecord:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    _distinct(chosen, rejected)
    return PreferenceRecord(prompt=_prompt(row, render), responses=[chosen, rejected], ranking=[0, 1], annotator="dataset")


def _hh(row: dict, render: Callable) -> PreferenceRecord:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise ValueError("hh 'chosen' and 'rejected' must be transcripts (text)")
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError("no shared '\\n\\nAssistant:' turn: chosen and rejected must be the same dialogue up to its last Assistant turn")
    end = cut + len(HH_ASSISTANT)
    prompt, responses = chosen[:end].lstrip(), [chosen[end:].strip(), rejected[end:].strip()]
    for name, response in zip(("chosen", "rejected"), responses):
        if not response:
            raise ValueError(f"empty final Assistant turn in '{name}'")
        if HH_ASSISTANT in response:
            raise ValueError(f"'{name}' differs from the other transcript before its last Assistant turn")
    _distinct(*responses)
    return PreferenceRecord(prompt=prompt, responses=responses, ranking=[0, 1], annotator="dataset")


def _chat(row: dict, render: Callable) -> PreferenceRecord:
    before_c, chosen = split_reply(row.get("chosen"), "chosen")
    before_r, rejected = split_reply(row.get("rejected"), "rejected")
    if chosen is None or rejected is None:
        raise ValueError("the last message of 'chosen' and of 'rejected' must be the assistant's reply")
    if before_c != before_r:
        raise ValueError("'chosen' and 'rejected' differ before their last message")
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        # A text prompt comes before the conversation; keep it as the opening user turn.
        before_c = [{"role": "user", "content": prompt}] + before_c
    elif prompt is not None:
        before_c = check_messages(prompt, "prompt") + before_c
    if not before_c:
        raise ValueError("no prompt: neither a 'prompt' nor messages before the assistant's reply")
    if not chosen or not rejected:
        raise ValueError("empty assistant reply")
    _distinct(chosen, rejected)
    return PreferenceRecord(prompt=render(before_c), responses=[chosen, rejected], ranking=[0, 1], annotator="dataset")


def _ratings(table: Table, rows: list[dict], bad: BadRecords) -> list[PreferenceRecord]:
    """One record per prompt, holding all its rated responses in file order."""
    by_prompt: dict[str, PreferenceRecord] = {}
    for index, row in enumerate(rows):
        try:
            prompt, response, score = _text(row, "prompt"), _text(row, "response"), row.get("score")
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise ValueError(f"'score' must be a finite number, got {score!r}")
        except ValueError as exc:
            bad.handle(table.where(index), str(exc))
            continue
        record = by_prompt.setdefault(prompt, PreferenceRecord(prompt=prompt, responses=[], scores=[], annotator="dataset",
                                                                meta={"source": os.path.basename(table.where(index))}))
        record.responses.append(response)
        record.scores.append(float(score))
    for record in by_prompt.values():
        record.validate()
    return list(by_prompt.values())
