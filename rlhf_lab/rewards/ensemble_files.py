"""The on-disk form of a reward-model ensemble: a directory whose ``members.json`` lists its members.

Each member is a reward model artifact of its own (a model directory with its normaliser), cached
under its own key, so an ensemble of five reuses the single reward model of an earlier run as member 0
and stores nothing twice. ``members.json`` holds the members' paths relative to the ensemble's
directory, so the cache can move as a whole. A directory without it is one reward model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MEMBERS_FILE = "members.json"


def write_members(out: Path, members: list[Path]) -> None:
    """Record ``members`` (model directories) as the ensemble in ``out``. ``out`` may be a temporary
    directory beside the final one (the cache publishes by renaming): paths are relative to its parent."""
    relative = [os.path.relpath(Path(m).resolve(), Path(out).resolve().parent) for m in members]
    (Path(out) / MEMBERS_FILE).write_text(json.dumps({"members": [str(Path("..") / r) for r in relative]}, indent=1) + "\n")


def member_dirs(path) -> list[Path]:
    """The model directories of the reward model at ``path``: its members for an ensemble, else itself."""
    path = Path(path)
    listing = path / MEMBERS_FILE
    if not listing.is_file():
        return [path]
    try:
        members = [(path / m).resolve() for m in json.loads(listing.read_text())["members"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{listing}: not a list of ensemble members ({exc})") from None
    missing = [str(m) for m in members if not (m / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{listing}: member(s) {', '.join(missing)} no longer exist (removed from the cache?); "
                                "run the same command again to train them")
    return members
