"""Durable storage of a labelling campaign: SQLite in WAL mode, one file per campaign database.

Every label is committed (``synchronous=FULL``) before the caller is told it was saved, so a label the
page saw acknowledged survives a crash of the server or the machine. A label is unique per
(labeller, item): a retry or a double click finds the label already there and is answered as a
duplicate, never counted twice.

Items carry the prompt, the responses (with their token ids when a policy sampled them), an optional
gold ranking (never sent to labellers) and, for a repeated item, the item it repeats (self-consistency).
Labels hold a ranking (best first; a tie of two is stored as ``tie``), or a skip, plus an optional
1-7 rating, a free-text reason and the seconds the labeller spent. Online feedback from a deployed
application uses the same tables: each logged (prompt, response) is an item and each thumb, rating or
choice is a label of the application's labeller.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from rlhf_lab.labelling.schema import SCHEMA

ROLES = ("crowd", "expert", "admin", "app")


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def item_key(*parts) -> str:
    """A stable key for an item, so adding the same item again (a restarted round) finds the first one."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Labeller:
    """Someone (or a program) allowed to label: ``role`` is crowd, expert, admin or app."""

    id: int
    campaign: str
    name: str
    role: str
    excluded: bool = False


@dataclass
class Item:
    """One question: a prompt and two or more responses (one for online thumbs and ratings)."""

    id: int
    campaign: str
    batch: str
    prompt: str
    responses: list[str]
    response_ids: Optional[list[list[int]]] = None
    gold: Optional[list[int]] = None
    repeat_of: Optional[int] = None
    needs_expert: bool = False
    source: str = "campaign"


@dataclass
class Label:
    """One labeller's answer to one item."""

    item_id: int
    labeller_id: int
    ranking: Optional[list[int]] = None
    tie: bool = False
    skip: bool = False
    rating: Optional[int] = None
    thumb: Optional[int] = None
    reason: Optional[str] = None
    seconds: Optional[float] = None
    created: float = field(default_factory=time.time)

    def same_answer(self, other: "Label") -> bool:
        """Whether two labels say the same thing (a retry), ignoring timing."""
        keys = ("ranking", "tie", "skip", "rating", "thumb", "reason")
        return all(getattr(self, key) == getattr(other, key) for key in keys)


class DuplicateLabel(Exception):
    """The labeller already answered this item differently; the first answer stands."""


class LabelStore:
    """A campaign database. Safe to share between threads: each thread gets its own connection."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._db().executescript(SCHEMA)  # idempotent (IF NOT EXISTS); executescript commits on its own

    # --- connections --------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is synced at every commit, so an acknowledged label survives power loss too.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        # IMMEDIATE takes the write lock at once: two writers queue instead of failing mid-way.
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # --- campaigns and labellers -------------------------------------------------------------

    def ensure_campaign(self, name: str, settings: dict) -> dict:
        """Create the campaign, or return the settings it was created with (they are kept)."""
        with self._write() as db:
            row = db.execute("SELECT settings FROM campaigns WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return json.loads(row["settings"])
            db.execute("INSERT INTO campaigns VALUES (?, ?, ?)", (name, json.dumps(settings, sort_keys=True), time.time()))
            return settings

    def campaign_settings(self, name: str) -> Optional[dict]:
        """The settings of campaign ``name``, or None if there is no such campaign."""
        row = self._db().execute("SELECT settings FROM campaigns WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row["settings"])

    def add_labeller(self, campaign: str, name: str, role: str = "crowd", token: Optional[str] = None) -> str:
        """Register a labeller and return their token (stored only as a hash: keep it)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got '{role}'")
        token = token or secrets.token_urlsafe(24)
        with self._write() as db:
            if db.execute("SELECT 1 FROM labellers WHERE campaign = ? AND name = ?", (campaign, name)).fetchone():
                raise ValueError(f"campaign '{campaign}' already has a labeller '{name}'")
            db.execute(
                "INSERT INTO labellers (campaign, name, role, token_hash, created) VALUES (?, ?, ?, ?, ?)",
                (campaign, name, role, _hash_token(token), time.time()),
            )
        return token

    def labeller_for_token(self, token: str) -> Optional[Labeller]:
        """The labeller a token belongs to, or None."""
        row = self._db().execute("SELECT * FROM labellers WHERE token_hash = ?", (_hash_token(token),)).fetchone()
        return None if row is None else self._labeller(row)

    def labeller(self, campaign: str, name: str) -> Optional[Labeller]:
        """The labeller called ``name`` in ``campaign``, or None."""
        row = self._db().execute("SELECT * FROM labellers WHERE campaign = ? AND name = ?", (campaign, name)).fetchone()
        return None if row is None else self._labeller(row)

    def labellers(self, campaign: str) -> list[Labeller]:
        """Every labeller of the campaign."""
        rows = self._db().execute("SELECT * FROM labellers WHERE campaign = ? ORDER BY id", (campaign,)).fetchall()
        return [self._labeller(row) for row in rows]

    def set_excluded(self, campaign: str, name: str, excluded: bool = True) -> None:
        """Exclude a labeller's labels from aggregation (or take them back in)."""
        with self._write() as db:
            db.execute("UPDATE labellers SET excluded = ? WHERE campaign = ? AND name = ?", (int(excluded), campaign, name))

    @staticmethod
    def _labeller(row) -> Labeller:
        return Labeller(row["id"], row["campaign"], row["name"], row["role"], bool(row["excluded"]))

    # --- items --------------------------------------------------------------------------------

    def add_items(self, campaign: str, batch: str, items: list[dict], source: str = "campaign") -> list[int]:
        """Add items (``prompt``, ``responses``, optional ``response_ids``, ``gold``, ``repeat_of_key``,
        ``key``); an item whose key exists is not added again. Returns the ids in the order given."""
        ids = []
        now = time.time()
        with self._write() as db:
            for item in items:
                key = item.get("key") or item_key(batch, item["prompt"], item["responses"])
                row = db.execute("SELECT id FROM items WHERE campaign = ? AND key = ?", (campaign, key)).fetchone()
                if row is None:
                    repeat_of = None
                    if item.get("repeat_of_key"):
                        original = db.execute("SELECT id FROM items WHERE campaign = ? AND key = ?", (campaign, item["repeat_of_key"])).fetchone()
                        repeat_of = original["id"] if original else None
                    cursor = db.execute(
                        "INSERT INTO items (campaign, key, batch, prompt, responses, response_ids, gold, repeat_of, source, created)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            campaign, key, batch, item["prompt"], json.dumps(item["responses"]),
                            json.dumps(item["response_ids"]) if item.get("response_ids") is not None else None,
                            json.dumps(item["gold"]) if item.get("gold") is not None else None,
                            repeat_of, source, now,
                        ),
                    )
                    ids.append(cursor.lastrowid)
                else:
                    ids.append(row["id"])
        return ids

    def item(self, item_id: int) -> Optional[Item]:
        """The item with this id, or None."""
        row = self._db().execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else self._item(row)

    def items(self, campaign: str, batch: Optional[str] = None, source: Optional[str] = None) -> list[Item]:
        """Items of the campaign (of one batch, or from one source), in the order they were added."""
        query, args = "SELECT * FROM items WHERE campaign = ?", [campaign]
        if batch is not None:
            query, args = query + " AND batch = ?", args + [batch]
        if source is not None:
            query, args = query + " AND source = ?", args + [source]
        return [self._item(row) for row in self._db().execute(query + " ORDER BY id", args).fetchall()]

    @staticmethod
    def _item(row) -> Item:
        return Item(
            row["id"], row["campaign"], row["batch"], row["prompt"], json.loads(row["responses"]),
            json.loads(row["response_ids"]) if row["response_ids"] else None,
            json.loads(row["gold"]) if row["gold"] else None,
            row["repeat_of"], bool(row["needs_expert"]), row["source"],
        )

    def candidates(self, labeller: Labeller, batch: Optional[str], redundancy: int):
        """Items this labeller may get next, in order, each with its count of crowd answers (skips
        excluded): for experts first the items routed to them that no expert has labelled; then, for
        everyone, items they have not labelled: gold items always, repeats once they labelled the
        original, other items while fewer than ``redundancy`` crowd answers are in. A generator over
        a cursor in id order, so taking the first few reads only the first few eligible rows.
        """
        db = self._db()
        crowd_count = (
            "(SELECT COUNT(*) FROM labels l JOIN labellers p ON p.id = l.labeller_id"
            " WHERE l.item_id = i.id AND p.role = 'crowd' AND l.skip = 0)"
        )
        base = (
            f"SELECT i.*, {crowd_count} AS crowd_count FROM items i WHERE i.campaign = ? AND i.source = 'campaign'"
            " AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.item_id = i.id AND l.labeller_id = ?)"
        )
        args: list = [labeller.campaign, labeller.id]
        if batch is not None:
            base += " AND i.batch = ?"
            args.append(batch)
        queries = []
        if labeller.role == "expert":
            queries.append((
                base + " AND i.needs_expert = 1 AND NOT EXISTS (SELECT 1 FROM labels l JOIN labellers p ON p.id = l.labeller_id"
                " WHERE l.item_id = i.id AND p.role = 'expert') ORDER BY i.id",
                args,
            ))
        queries.append((
            base + " AND (i.gold IS NOT NULL"
            " OR (i.repeat_of IS NOT NULL AND EXISTS (SELECT 1 FROM labels l WHERE l.item_id = i.repeat_of AND l.labeller_id = ?))"
            f" OR (i.repeat_of IS NULL AND {crowd_count} < ?)) ORDER BY i.id",
            args + [labeller.id, redundancy],
        ))
        for query, query_args in queries:
            cursor = db.execute(query, query_args)
            try:
                while rows := cursor.fetchmany(32):
                    for row in rows:
                        yield self._item(row), row["crowd_count"]
            finally:
                # An unfinished statement would hold this connection's read snapshot open (stale reads).
                cursor.close()

    def batch_counts(self, campaign: str, batch: Optional[str], redundancy: int) -> tuple[int, int]:
        """(items done, items) of a batch, repeats left out. An item is done when it has ``redundancy``
        crowd answers (or every crowd labeller answered it) and, if routed to an expert, an expert's."""
        crowd = self._db().execute("SELECT COUNT(*) FROM labellers WHERE campaign = ? AND role = 'crowd'", (campaign,)).fetchone()[0]

        def count(condition: str) -> str:
            return f"(SELECT COUNT(*) FROM labels l JOIN labellers p ON p.id = l.labeller_id WHERE l.item_id = i.id AND {condition})"

        answers, seen, experts = count("p.role = 'crowd' AND l.skip = 0"), count("p.role = 'crowd'"), count("p.role = 'expert'")
        query = (
            f"SELECT COUNT(*), COALESCE(SUM(((answers >= ?) OR ((?) > 0 AND (seen >= ?))) AND (needs_expert = 0 OR experts > 0)), 0) FROM ("
            f"SELECT i.needs_expert, {answers} AS answers, {seen} AS seen, {experts} AS experts FROM items i"
            " WHERE i.campaign = ? AND i.source = 'campaign' AND i.repeat_of IS NULL" + (" AND i.batch = ?" if batch is not None else "") + ")"
        )
        args = [redundancy, crowd, crowd, campaign] + ([batch] if batch is not None else [])
        total, done = self._db().execute(query, args).fetchone()
        return int(done), int(total)

    def crowd_answers(self, item_id: int) -> int:
        """Crowd labels of this item that answer it (skips left out), as :meth:`candidates` counts them."""
        return self._db().execute(
            "SELECT COUNT(*) FROM labels l JOIN labellers p ON p.id = l.labeller_id WHERE l.item_id = ? AND p.role = 'crowd' AND l.skip = 0",
            (item_id,),
        ).fetchone()[0]

    def has_label(self, item_id: int, labeller_id: int) -> bool:
        """Whether this labeller answered this item."""
        return self._db().execute("SELECT 1 FROM labels WHERE item_id = ? AND labeller_id = ?", (item_id, labeller_id)).fetchone() is not None

    # --- labels -------------------------------------------------------------------------------

    def submit(self, labeller: Labeller, label: Label, route_disagreement=None) -> bool:
        """Store a label durably. Returns True if it is new, False if the same answer was already stored.

        :param route_disagreement: ``f(labels of the item) -> bool``, called in the same transaction;
            True marks the item for an expert.
        :raises DuplicateLabel: the labeller already gave a different answer to this item.
        """
        with self._write() as db:
            existing = db.execute("SELECT * FROM labels WHERE item_id = ? AND labeller_id = ?", (label.item_id, labeller.id)).fetchone()
            if existing is not None:
                if self._label(existing).same_answer(label):
                    return False
                raise DuplicateLabel(f"item {label.item_id} is already labelled by '{labeller.name}'")
            db.execute(
                "INSERT INTO labels (item_id, labeller_id, ranking, tie, skip, rating, thumb, reason, seconds, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    label.item_id, labeller.id, json.dumps(label.ranking) if label.ranking is not None else None,
                    int(label.tie), int(label.skip), label.rating, label.thumb, label.reason, label.seconds, label.created,
                ),
            )
            if route_disagreement is not None and labeller.role == "crowd":
                rows = db.execute(
                    "SELECT l.* FROM labels l JOIN labellers p ON p.id = l.labeller_id WHERE l.item_id = ? AND p.role = 'crowd'",
                    (label.item_id,),
                ).fetchall()
                if route_disagreement([self._label(row) for row in rows]):
                    db.execute("UPDATE items SET needs_expert = 1 WHERE id = ?", (label.item_id,))
        return True

    def labels(self, campaign: str, batch: Optional[str] = None, labeller_id: Optional[int] = None) -> list[Label]:
        """Labels of the campaign's items (of one batch, or by one labeller), oldest first."""
        query = "SELECT l.* FROM labels l JOIN items i ON i.id = l.item_id WHERE i.campaign = ?"
        args: list = [campaign]
        if batch is not None:
            query, args = query + " AND i.batch = ?", args + [batch]
        if labeller_id is not None:
            query, args = query + " AND l.labeller_id = ?", args + [labeller_id]
        return [self._label(row) for row in self._db().execute(query + " ORDER BY l.id", args).fetchall()]

    @staticmethod
    def _label(row) -> Label:
        return Label(
            row["item_id"], row["labeller_id"], json.loads(row["ranking"]) if row["ranking"] else None,
            bool(row["tie"]), bool(row["skip"]), row["rating"], row["thumb"], row["reason"], row["seconds"], row["created"],
        )

    def claim_online(self, campaign: str, batch: str) -> list[int]:
        """Ids of the online items with feedback that no other batch has used yet, now claimed by
        ``batch`` (claiming again for the same batch, after a restart, returns the same ids)."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO online_used (item_id, batch) SELECT i.id, ? FROM items i"
                " WHERE i.campaign = ? AND i.source = 'online' AND EXISTS (SELECT 1 FROM labels l WHERE l.item_id = i.id)",
                (batch, campaign),
            )
            rows = db.execute(
                "SELECT u.item_id FROM online_used u JOIN items i ON i.id = u.item_id WHERE i.campaign = ? AND u.batch = ? ORDER BY u.item_id",
                (campaign, batch),
            ).fetchall()
        return [row[0] for row in rows]

    def count_labels(self, campaign: str) -> int:
        """Labels stored for the campaign."""
        return self._db().execute(
            "SELECT COUNT(*) FROM labels l JOIN items i ON i.id = l.item_id WHERE i.campaign = ?", (campaign,)
        ).fetchone()[0]
