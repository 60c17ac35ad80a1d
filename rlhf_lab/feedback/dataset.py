"""Offline feedback: preference records read from JSONL files (format in :mod:`rlhf_lab.feedback.records`)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rlhf_lab import hookimpl
from rlhf_lab.errors import DataError, RlhfLabError
from rlhf_lab.feedback.records import PreferenceRecord, read_jsonl


@dataclass
class DatasetFeedbackConfig:
    """Schema of ``feedback=dataset``."""

    name: str = "dataset"
    path: Optional[str] = None
    """JSONL file of preference records (required)."""
    heldout_path: Optional[str] = None
    """Held-out records for reward-model accuracy; null: the last ``heldout_fraction`` of ``path``."""
    heldout_fraction: float = 0.1
    """Share of ``path`` held out when there is no ``heldout_path``."""

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"feedback.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


class DatasetFeedback:
    """Returns the records in ``path``; the candidates sampled by the pipeline are not used."""

    needs_candidates = False

    def __init__(self, cfg: DatasetFeedbackConfig, task) -> None:
        if not cfg.path:
            raise RlhfLabError("feedback=dataset needs feedback.path=<file.jsonl>")
        for key in ("path", "heldout_path"):
            value = getattr(cfg, key)
            if value and not Path(value).is_file():
                raise DataError(f"feedback.{key}: preference file '{value}' not found")
        self.cfg = cfg

    def collect(self, prompts, candidates, kind: str, seed: int, split: str = "train") -> list[PreferenceRecord]:
        """The ``split`` ("train" or "heldout") records, checked to carry ``kind`` feedback."""
        if self.cfg.heldout_path:
            return self._read(self.cfg.path if split == "train" else self.cfg.heldout_path, kind)
        records = self._read(self.cfg.path, kind)
        # The split must not depend on which split is asked for first: shuffle with a fixed seed.
        random.Random(0).shuffle(records)
        n_held = max(1, int(len(records) * self.cfg.heldout_fraction))
        return records[n_held:] if split == "train" else records[:n_held]

    @staticmethod
    def _read(path: str, kind: str) -> list[PreferenceRecord]:
        records = read_jsonl(path)
        field = "ranking" if kind == "ranking" else "scores"
        missing = [i for i, r in enumerate(records) if getattr(r, field) is None]
        if missing:
            raise RlhfLabError(f"{path}: record {missing[0] + 1} has no '{field}', which this reward model trains on")
        return records


@hookimpl
def rlhf_lab_register_feedback_sources(register):
    register("dataset", DatasetFeedback, DatasetFeedbackConfig)
