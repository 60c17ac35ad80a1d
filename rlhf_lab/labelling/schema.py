"""The SQLite schema of a labelling campaign database (see :mod:`rlhf_lab.labelling.store`).

Every statement is ``IF NOT EXISTS``, so opening an existing database runs it again harmlessly. The
UNIQUE constraints carry the store's guarantees: one label per (item, labeller), so a retried
submission can never count twice, and one item per (campaign, key), so a restarted round finds the
items it added before. ``online_used`` records which batch consumed each item of online feedback.
"""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    name TEXT PRIMARY KEY, settings TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labellers (
    id INTEGER PRIMARY KEY, campaign TEXT NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE, excluded INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
    UNIQUE (campaign, name)
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, campaign TEXT NOT NULL, key TEXT NOT NULL, batch TEXT NOT NULL,
    prompt TEXT NOT NULL, responses TEXT NOT NULL, response_ids TEXT, gold TEXT, repeat_of INTEGER,
    needs_expert INTEGER NOT NULL DEFAULT 0, source TEXT NOT NULL DEFAULT 'campaign', created REAL NOT NULL,
    UNIQUE (campaign, key)
);
CREATE INDEX IF NOT EXISTS items_batch ON items (campaign, batch);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items (id),
    labeller_id INTEGER NOT NULL REFERENCES labellers (id),
    ranking TEXT, tie INTEGER NOT NULL DEFAULT 0, skip INTEGER NOT NULL DEFAULT 0,
    rating INTEGER, thumb INTEGER, reason TEXT, seconds REAL, created REAL NOT NULL,
    UNIQUE (item_id, labeller_id)
);
CREATE INDEX IF NOT EXISTS labels_labeller ON labels (labeller_id);
CREATE TABLE IF NOT EXISTS online_used (
    item_id INTEGER PRIMARY KEY REFERENCES items (id), batch TEXT NOT NULL
);
"""
