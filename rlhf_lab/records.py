"""Preference records and their JSONL form.

One record per line::

    {"prompt": "...", "responses": ["...", "..."], "ranking": [1, 0], "annotator": "a0", "meta": {}}

``ranking`` lists response indices from best to worst (a pairwise choice is a ranking of two);
``scores`` holds one rating per response instead. At least one of the two is required.
``response_ids`` (optional) holds the exact token ids of each response, EOS included where the
response ended: records of candidates sampled from a policy carry them, so a reward model or DPO
trains on exactly the tokens the policy produced, with no decode/re-encode round trip.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from rlhf_lab.errors import DataError


@dataclass
class PreferenceRecord:
    """Feedback on the candidate responses to one prompt."""

    prompt: str
    responses: list[str]
    ranking: Optional[list[int]] = None
    scores: Optional[list[float]] = None
    annotator: str = "unknown"
    meta: dict = field(default_factory=dict)
    response_ids: Optional[list[list[int]]] = None

    def validate(self) -> None:
        """Raise ``ValueError`` describing the first inconsistency."""
        if not isinstance(self.prompt, str) or not isinstance(self.responses, list) or not all(isinstance(r, str) for r in self.responses):
            raise ValueError("'prompt' must be a string and 'responses' a list of strings")
        if len(self.responses) < 2 and self.scores is None:
            raise ValueError("a ranking needs at least 2 responses")
        if self.ranking is None and self.scores is None:
            raise ValueError("needs 'ranking' or 'scores'")
        # JSON's true/false are Python ints too: a ranking of booleans would pass the permutation check
        if self.ranking is not None and (not isinstance(self.ranking, list) or not all(_is_int(i) for i in self.ranking)):
            raise ValueError(f"'ranking' must be a list of response indices (integers), got {self.ranking!r}")
        if self.scores is not None and (
            not isinstance(self.scores, list) or not all(_is_number(x) and math.isfinite(x) for x in self.scores)
        ):
            raise ValueError(f"'scores' must be a list of finite numbers, got {self.scores!r}")
        if not isinstance(self.annotator, str) or not isinstance(self.meta, dict):
            raise ValueError(f"'annotator' must be a string and 'meta' an object, got {self.annotator!r} and {self.meta!r}")
        if self.ranking is not None and sorted(self.ranking) != list(range(len(self.responses))):
            raise ValueError(f"'ranking' {self.ranking} is not a permutation of 0..{len(self.responses) - 1}")
        if self.scores is not None and len(self.scores) != len(self.responses):
            raise ValueError(f"{len(self.scores)} scores for {len(self.responses)} responses")
        if self.response_ids is not None and (
            len(self.response_ids) != len(self.responses)
            or not all(isinstance(ids, list) and all(_is_int(t) and t >= 0 for t in ids) for ids in self.response_ids)
        ):
            raise ValueError(f"'response_ids' must hold one list of non-negative token ids per response ({len(self.responses)})")

    def preference_pairs(self) -> list[tuple[int, int]]:
        """All (better, worse) index pairs: K-choose-2 from a ranking, or from distinct scores."""
        if self.ranking is not None:
            r = self.ranking
            return [(r[i], r[j]) for i in range(len(r)) for j in range(i + 1, len(r))]
        s = self.scores
        return [(i, j) if s[i] > s[j] else (j, i) for i in range(len(s)) for j in range(i + 1, len(s)) if s[i] != s[j]]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_jsonl(records: list[PreferenceRecord], path: Path) -> None:
    """Write atomically: a crash mid-write leaves any previous file intact."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as fh:
        for record in records:
            fh.write(json.dumps(asdict(record)) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[PreferenceRecord]:
    """Read records; a malformed line raises :class:`DataError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: preference file not found")
    records = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if not isinstance(raw, dict):
                    raise ValueError("expected a JSON object")
                unknown = set(raw) - {f for f in PreferenceRecord.__dataclass_fields__}
                if unknown:
                    raise ValueError(f"unknown field(s) {sorted(unknown)}")
                record = PreferenceRecord(**raw)
                record.validate()
            except (ValueError, TypeError) as exc:
                raise DataError(f"{path}:{lineno}: malformed preference record: {exc}") from None
            records.append(record)
    if not records:
        raise DataError(f"{path}: no preference records")
    return records
