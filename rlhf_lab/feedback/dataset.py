"""Offline feedback: preference records read from the files people publish.

The formats (native records, pairwise prompt/chosen/rejected, Anthropic HH-RLHF transcripts, chat
message pairs, K-wise rankings, per-response ratings) are in :mod:`rlhf_lab.preference_formats`; the
file kinds (JSONL, JSON, CSV, Parquet, ``save_to_disk`` directories) in :mod:`rlhf_lab.datafiles`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Optional

from rlhf_lab import hookimpl
from rlhf_lab.chat import load_chat_tokenizer
from rlhf_lab.datafiles import FileSourceConfig, read_table
from rlhf_lab.errors import DataError, RlhfLabError
from rlhf_lab.preference_formats import FORMATS, parse_preferences
from rlhf_lab.records import PreferenceRecord

log = logging.getLogger(__name__)


@dataclass
class PreferenceColumns:
    """The file's column names for each role (null: the role's own name); see docs/data.md."""

    prompt: Optional[str] = None
    """The prompt (text, or a message list)."""
    chosen: Optional[str] = None
    """pairwise, hh and chat formats: the preferred response (or transcript, or messages)."""
    rejected: Optional[str] = None
    """pairwise, hh and chat formats: the other one."""
    responses: Optional[str] = None
    """native format: the K responses."""
    ranking: Optional[str] = None
    """native format: response indices from best to worst."""
    scores: Optional[str] = None
    """native format: one rating per response."""
    response: Optional[str] = None
    """rating format: the rated response."""
    score: Optional[str] = None
    """rating format: its rating."""


@dataclass
class DatasetFeedbackConfig(FileSourceConfig):
    """Schema of ``feedback=dataset``."""

    group: ClassVar[str] = "feedback"

    path: Optional[str] = None
    """Preference file (.jsonl, .json, .csv, .parquet), ``save_to_disk`` directory or hub name (required)."""
    heldout_path: Optional[str] = None
    """Held-out records for reward-model accuracy; null: a seeded ``heldout_fraction`` of ``path``."""
    format: str = "auto"
    """auto (detected from the columns), native, pairwise, hh, chat or rating; see docs/data.md."""
    columns: PreferenceColumns = field(default_factory=PreferenceColumns)
    """Column names, for files that name them otherwise: ``feedback.columns.score=helpfulness``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format not in ("auto",) + FORMATS:
            raise ValueError(f"feedback.format must be auto or one of {list(FORMATS)}, got '{self.format}'")


class DatasetFeedback:
    """Returns the records read from ``path``; the candidates sampled by the pipeline are not used.

    ``stats`` holds the counts of rows skipped (``feedback/<split>_skipped``) after each ``collect``.
    """

    needs_candidates = False

    def __init__(self, cfg: DatasetFeedbackConfig, task) -> None:
        if not cfg.path:
            raise RlhfLabError("feedback=dataset needs feedback.path=<file>")
        self.cfg = cfg
        self.stats: dict[str, int] = {}
        self._chat_tokenizer = None
        self._loaded: dict[str, list[PreferenceRecord]] = {}

    def collect(self, prompts, candidates, kind: str, seed: int, split: str = "train") -> list[PreferenceRecord]:
        """The ``split`` ("train" or "heldout") records, checked to carry ``kind`` feedback."""
        if self.cfg.heldout_path:
            if split == "train":
                return self._read("path", self.cfg.path, self.cfg.split, kind)
            return self._read("heldout_path", self.cfg.heldout_path, "test", kind)
        records = list(self._read("path", self.cfg.path, self.cfg.split, kind))
        # The split must not depend on which split is asked for first: shuffle with a fixed seed.
        random.Random(0).shuffle(records)
        n_held = max(1, int(len(records) * self.cfg.heldout_fraction))
        if len(records) - n_held < 1:
            raise DataError(f"{self.cfg.path}: {len(records)} record(s) cannot be split into training and held-out records")
        return records[n_held:] if split == "train" else records[:n_held]

    def _read(self, key: str, source: str, split: str, kind: str) -> list[PreferenceRecord]:
        if key not in self._loaded:
            if self.cfg.chat_tokenizer and self._chat_tokenizer is None:
                self._chat_tokenizer = load_chat_tokenizer(self.cfg.chat_tokenizer, "feedback.chat_tokenizer")
            table = read_table(source, f"feedback.{key}", split)
            records, skipped = parse_preferences(table, self.cfg.format, asdict(self.cfg.columns), self.cfg.on_bad_record, self._chat_tokenizer)
            name = "train" if key == "path" else "heldout"
            self.stats[f"feedback/{name}_skipped"] = sum(skipped.values())
            if skipped:
                log.warning("%s: skipped %d malformed record(s): %s", source, sum(skipped.values()), dict(skipped))
            self._loaded[key] = records
        records = self._loaded[key]
        # Pairwise objectives take rated records too (their distinct scores order the pairs); a
        # pointwise model needs the ratings themselves.
        if kind != "ranking":
            for record in records:
                if record.scores is None:
                    raise DataError(f"{record.meta.get('source', source)}: the record has no 'scores', which this reward model trains on")
        return records


@hookimpl
def rlhf_lab_register_feedback_sources(register):
    register("dataset", DatasetFeedback, DatasetFeedbackConfig)
