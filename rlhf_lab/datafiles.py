"""Reading the tables users bring: JSONL, JSON, CSV, Parquet, a ``datasets`` directory saved with
``save_to_disk``, or (online) a Hugging Face hub dataset name.

Reading is the ``datasets`` library's; this module adds what a user needs when a file is wrong: every
row knows where it came from (``file:line`` for JSONL, ``file: row n`` otherwise), and a file that
``datasets`` cannot parse is scanned once more to name the first bad line.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from rlhf_lab.errors import DataError

LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class FileSourceConfig:
    """Fields shared by the schemas that read users' files (``task=dataset``, ``feedback=dataset``)."""

    group: ClassVar[str] = ""
    """The config group, for messages (``task``, ``feedback``)."""

    name: str = "dataset"
    path: Optional[str] = None
    """A .jsonl, .json, .csv or .parquet file, a ``save_to_disk`` directory or a hub name (required)."""
    heldout_path: Optional[str] = None
    """Held-out rows from another source; null: a seeded ``heldout_fraction`` of ``path``."""
    heldout_fraction: float = 0.1
    """Share of ``path`` held out when there is no ``heldout_path``."""
    split: str = "train"
    """Split read from a multi-split directory or hub dataset (``heldout_path`` reads ``test``)."""
    on_bad_record: str = "error"
    """error: a malformed row stops the run naming its file:line; skip: it is skipped and counted."""
    chat_tokenizer: Optional[str] = None
    """Model directory whose tokenizer's chat template renders message-list prompts (null: the plain
    template). The option's YAML sets it to ``${model.name_or_path}``."""

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"{self.group}.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.on_bad_record not in ("error", "skip"):
            raise ValueError(f"{self.group}.on_bad_record must be error or skip, got '{self.on_bad_record}'")


@dataclass
class Table:
    """The rows of one source, as dicts, with where each came from."""

    source: str
    rows: list[dict]
    lines: Optional[list[int]] = None
    """1-based line of each row (JSONL only)."""

    def where(self, index: int) -> str:
        """``file:line`` (JSONL) or ``file: row n`` of row ``index``."""
        if self.lines is not None:
            return f"{self.source}:{self.lines[index]}"
        return f"{self.source}: row {index + 1}"


def check_mapped_columns(table: Table, columns: Optional[dict], group: str) -> None:
    """A ``<group>.columns.<ours>=<theirs>`` mapping must name a column the file has: a misspelt one
    would otherwise be ignored, and the file read by its other columns."""
    present = {k for row in table.rows for k, v in row.items() if v is not None}
    for ours, theirs in (columns or {}).items():
        if theirs and theirs not in present:
            raise DataError(f"{table.source}: {group}.columns.{ours}={theirs}, but the file has no column '{theirs}' (it has {', '.join(sorted(present))})")


def read_table(source: str, key: str, split: str = "train") -> Table:
    """Rows of ``source`` (a file, a ``save_to_disk`` directory, or a hub name); errors name ``key``.

    :param split: which split of a multi-split directory or hub dataset to read.
    """
    import datasets

    datasets.disable_progress_bars()
    # Its parser failures are reported once, by the DataError below, not also logged by datasets.
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    path = Path(source).expanduser()
    if path.is_dir():
        return Table(source, _from_disk(path, key, split).to_list())
    if not path.exists():
        if path.suffix.lower() in LOADERS or source.startswith(("/", "./", "../", "~")):
            raise DataError(f"{key}: file '{source}' not found")
        return _from_hub(source, key, split)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"{key}: '{source}' is not a .jsonl, .json, .csv or .parquet file, nor a save_to_disk directory")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{source}: the file is empty")
    if path.suffix.lower() in (".csv", ".json"):
        _check_utf8(path, data)
    if path.suffix.lower() == ".jsonl":
        # Arrow's reader names no line and quietly casts a number to text in a text column: check first.
        _check_jsonl(path)
    # A private cache, dropped afterwards: nothing stale is reused and nothing piles up in ~/.cache.
    with tempfile.TemporaryDirectory(prefix="rlhf_lab_datasets_") as cache:
        try:
            dataset = datasets.load_dataset(loader, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True)
        except Exception as exc:  # datasets wraps parser errors in several types
            raise DataError(f"{source}: could not be read as {loader}: {_first_line(exc)}") from None
        rows = dataset.to_list()
    if not rows:
        raise DataError(f"{source}: no rows")
    lines = _jsonl_lines(path) if path.suffix.lower() == ".jsonl" else None
    if lines is not None and len(lines) != len(rows):
        lines = None  # a line holding several objects: fall back to row numbers
    return Table(source, rows, lines)


def _from_disk(path: Path, key: str, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    except FileNotFoundError:
        raise DataError(f"{key}: '{path}' is a directory but not one written by datasets' save_to_disk") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{key}: '{path}' has splits {sorted(loaded)}, not '{split}'")
        loaded = loaded[split]
    return loaded


def _from_hub(name: str, key: str, split: str) -> Table:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:
        raise DataError(f"{key}: '{name}' is no local file or directory, and loading it from the hub failed: {_first_line(exc)}") from None
    return Table(f"{name}[{split}]", dataset.to_list())


def _check_utf8(path: Path, data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start, line = data.rfind(b"\n", 0, exc.start) + 1, data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column "
            f"{exc.start - line_start + 1}); save the file as UTF-8"
        ) from None


def _jsonl_lines(path: Path) -> list[int]:
    with path.open("rb") as fh:
        return [number for number, line in enumerate(fh, start=1) if line.strip()]


def _check_jsonl(path: Path) -> None:
    """Raise :class:`DataError` at the first line that is no JSON object, or whose field types differ
    from the first line's."""
    first_types: dict[str, type] = {}
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            for field, value in row.items():
                if value is None:
                    continue
                if field not in first_types:
                    first_types[field] = type(value)
                elif not isinstance(value, first_types[field]) and {type(value), first_types[field]} != {int, float}:
                    raise DataError(
                        f"{path}:{number}: field '{field}' is a {type(value).__name__} here but a "
                        f"{first_types[field].__name__} on an earlier line; a column must keep one type"
                    )


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
