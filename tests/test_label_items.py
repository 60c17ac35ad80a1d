"""``label add-items`` reads its own item files and every published preference format, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_lab.labelling.store import LabelStore

from conftest import run_main

HH = [
    {"chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for nine minutes.",
     "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: Eggs are laid by hens."},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is two plus two?\n\nAssistant: Four.",
     "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is two plus two?\n\nAssistant: Five."},
]


@pytest.fixture
def db(tmp_path, monkeypatch, capsys) -> Path:
    path = tmp_path / "labels.db"
    assert run_main(["label", "create", "--db", str(path)], monkeypatch, capsys)[0] == 0
    return path


def _items(db: Path) -> list[tuple[str, list[str]]]:
    return [(item.prompt, item.responses) for item in LabelStore(db).items("default")]


def test_hh_transcripts_become_items_of_their_last_turn(db, tmp_path, monkeypatch, capsys):
    path = tmp_path / "harmless-base-test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in HH))
    code, err = run_main(["label", "add-items", "--file", str(path), "--db", str(db)], monkeypatch, capsys)
    assert code == 0, err
    items = _items(db)
    assert [responses for _, responses in items] == [["Put it in boiling water for nine minutes.", "Eggs are laid by hens."], ["Four.", "Five."]]
    assert items[1][0].endswith("What is two plus two?\n\nAssistant:") and "Hello!" in items[1][0]
    assert all(item.gold is None for item in LabelStore(db).items("default"))  # a published answer is not a gold answer


def test_a_pairwise_csv_and_ratings_are_read_too(db, tmp_path, monkeypatch, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("prompt,chosen,rejected\nname a colour,blue,a car\nname a fruit,a pear,a chair\n")
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "say hi", "response": "hi", "score": 6}, {"prompt": "say hi", "response": "go away", "score": 1},
        {"prompt": "alone", "response": "one rated response", "score": 3}]))
    assert run_main(["label", "add-items", "--file", str(pairs), "--batch", "pairs", "--db", str(db)], monkeypatch, capsys)[0] == 0
    code, err = run_main(["label", "add-items", "--file", str(ratings), "--batch", "rated", "--db", str(db)], monkeypatch, capsys)
    assert code == 0, err
    assert _items(db) == [("name a colour", ["blue", "a car"]), ("name a fruit", ["a pear", "a chair"]), ("say hi", ["hi", "go away"])]


def test_a_malformed_published_row_names_its_line_and_the_option_that_skips_it(db, tmp_path, monkeypatch, capsys):
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [*HH, {"chosen": "no turns here", "rejected": "none here either"}]))
    code, err = run_main(["label", "add-items", "--file", str(path), "--db", str(db)], monkeypatch, capsys)
    assert code == 2 and f"{path}:3: malformed preference record" in err and "(--on-bad-record=skip skips such rows)" in err, err
    assert _items(db) == []  # nothing of a refused file is added
    code, err = run_main(["label", "add-items", "--file", str(path), "--on-bad-record", "skip", "--db", str(db)], monkeypatch, capsys)
    assert code == 0 and len(_items(db)) == 2
