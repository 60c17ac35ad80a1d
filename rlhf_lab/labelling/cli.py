"""``python -m rlhf_lab label ...``: run a labelling campaign by hand.

    label create       --db D --campaign C [--redundancy 3 --expert-threshold 0.5 --aggregation majority --ask-rating]
    label add-labeller --db D --campaign C --name alice [--role crowd|expert|admin|app]   (prints the token once)
    label add-items    --db D --campaign C --file items.jsonl [--batch B]   (items, or a preference file in any published format)
    label serve        --db D --campaign C [--host 127.0.0.1 --port 8765 --public-url https://...]
    label terminal     --db D --campaign C --labeller alice   (label in this terminal, no browser)
    label status       --db D --campaign C
    label export       --db D --campaign C --out records.jsonl [--method majority|dawid_skene] [--batch B] [--keep-flagged]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rlhf_lab.errors import DataError, RlhfLabError


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port (a number from 0 to 65535; 0: any free one)")
    return int(text)


def _name(text: str) -> str:
    if not text.strip() or text != text.strip():
        raise argparse.ArgumentTypeError(f"'{text}': give a name without leading or trailing spaces")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlhf_lab label", description="Run a labelling campaign.")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--db", required=True, help="SQLite database of the campaign")
        sub.add_argument("--campaign", default="default", type=_name, help="campaign name (default: default)")
        return sub

    create = command("create", "create a campaign with its settings")
    create.add_argument("--redundancy", type=int, default=1)
    create.add_argument("--expert-threshold", type=float, default=0.5)
    create.add_argument("--aggregation", choices=["majority", "dawid_skene"], default="majority")
    create.add_argument("--ask-rating", action="store_true")
    labeller = command("add-labeller", "add a labeller and print their token")
    labeller.add_argument("--name", required=True, type=_name)
    labeller.add_argument("--role", choices=["crowd", "expert", "admin", "app"], default="crowd")
    items = command("add-items", "add items: a JSONL file of items, or a preference file in any format feedback=dataset reads")
    items.add_argument("--file", required=True, help="items.jsonl ({\"prompt\", \"responses\", \"gold\"?, \"key\"?} per line), or pairs, HH-RLHF transcripts, chat messages, rankings or ratings (JSONL, CSV, Parquet, save_to_disk)")
    items.add_argument("--batch", default="main", type=_name)
    items.add_argument("--on-bad-record", choices=["error", "skip"], default="error",
                       help="a malformed row of a published preference file stops the command (error) or is skipped and counted")
    serve = command("serve", "serve the labelling app")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8765)
    serve.add_argument("--public-url", help="the address labellers open, when not host:port (a proxy); pages of other origins cannot write")
    terminal = command("terminal", "label in this terminal")
    terminal.add_argument("--labeller", required=True)
    command("status", "print progress and quality figures")
    export = command("export", "write aggregated preference records")
    export.add_argument("--out", required=True)
    export.add_argument("--method", choices=["majority", "dawid_skene"])
    export.add_argument("--batch")
    export.add_argument("--keep-flagged", action="store_true", help="keep the labels of flagged labellers")
    return parser


def _open(args, create: bool = False):
    from rlhf_lab.labelling.campaign import Campaign, CampaignSettings
    from rlhf_lab.labelling.store import LabelStore

    if not create and not Path(args.db).is_file():
        raise RlhfLabError(f"--db {args.db}: no such database (create the campaign first: label create)")
    try:
        store = LabelStore(Path(args.db))
    except (OSError, sqlite3.Error) as error:
        raise RlhfLabError(f"--db {args.db}: cannot open the label database ({error})") from None
    if create:
        try:
            settings = CampaignSettings(redundancy=args.redundancy, expert_threshold=args.expert_threshold, aggregation=args.aggregation,
                                        ask_rating=args.ask_rating)
        except ValueError as error:  # e.g. "redundancy must be >= 1, got 0"
            raise RlhfLabError(f"label create: {error}") from None
        stored = store.campaign_settings(args.campaign)
        if stored is not None and CampaignSettings(**stored) != settings:
            raise RlhfLabError(f"--campaign {args.campaign}: {args.db} already holds this campaign, created with {json.dumps(stored)}; "
                               "a campaign keeps its settings: give another --campaign name")
        return Campaign(store, args.campaign, settings)
    if store.campaign_settings(args.campaign) is None:
        raise RlhfLabError(f"--campaign {args.campaign}: no such campaign in {args.db}")
    return Campaign(store, args.campaign)


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


LABEL_ITEM_FIELDS = {"prompt", "responses", "gold", "key"}


def read_items(path: Path, on_bad_record: str = "error") -> tuple[list[dict], int]:
    """Items to label, and how many rows were skipped (``on_bad_record="skip"``): from a JSONL file of
    items (``prompt``, ``responses`` with 2 or more texts, optional ``gold`` ranking and ``key``), or from
    a preference file in any published format ``feedback=dataset`` reads (pairs, HH-RLHF transcripts,
    chat messages, rankings, ratings; JSONL, CSV, Parquet or a ``save_to_disk`` directory), whose
    responses are asked about again with no answer given."""
    if path.is_file() and path.suffix.lower() == ".jsonl":
        text = _utf8(path)
        first = next((line for line in text.splitlines() if line.strip()), None)
        try:
            row = json.loads(first) if first is not None else None
        except ValueError:
            row = None  # the item reader names the line
        if first is None or not isinstance(row, dict) or (set(row) <= LABEL_ITEM_FIELDS and "responses" in row):
            return _label_items(path, text), 0
    elif not path.exists():
        raise DataError(f"{path}: file not found")
    return _published_items(path, on_bad_record)


def _utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({error.reason} at byte {error.start}); items are JSON lines") from None


def _label_items(path: Path, text: str) -> list[dict]:
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict) or set(raw) - LABEL_ITEM_FIELDS:
                raise ValueError("expected an object with 'prompt', 'responses' and optionally 'gold', 'key'")
            if not isinstance(raw.get("prompt"), str) or not isinstance(raw.get("responses"), list) or len(raw["responses"]) < 2 or not all(isinstance(r, str) for r in raw["responses"]):
                raise ValueError("'prompt' must be text and 'responses' a list of at least two texts")
            gold = raw.get("gold", [])
            if "gold" in raw and (not isinstance(gold, list) or not all(_is_index(i) for i in gold) or sorted(gold) != list(range(len(raw["responses"])))):
                raise ValueError(f"'gold' must rank the response indices 0-{len(raw['responses']) - 1}, each once, best first; got {json.dumps(gold)}")
            if "key" in raw and (not isinstance(raw["key"], str) or not raw["key"]):
                raise ValueError(f"'key' must be a non-empty text; got {json.dumps(raw['key'])}")
        except ValueError as error:
            raise DataError(f"{path}:{lineno}: {error}") from None
        items.append(raw)
    if not items:
        raise DataError(f"{path}: no items")
    return items


def _published_items(path: Path, on_bad_record: str) -> tuple[list[dict], int]:
    """One item per preference record of a published file: its prompt and its responses (a rating file's
    responses to one prompt become one item)."""
    from rlhf_lab.datafiles import read_table
    from rlhf_lab.preference_formats import parse_preferences

    records, skipped = parse_preferences(read_table(str(path), "--file"), "auto", None, on_bad_record, None, group="--on-bad-record")
    items = [{"prompt": r.prompt, "responses": list(r.responses)} for r in records if len(r.responses) >= 2]
    if not items:
        raise DataError(f"{path}: no record with two or more responses to compare")
    return items, sum(skipped.values()) + len(records) - len(items)


def terminal_session(campaign, labeller, read=input, write=print) -> int:
    """Label item after item at a terminal: ``a``/``b``/``t``/``s`` for two responses, or the response
    numbers best first (``2 1 3``) for more; ``q`` quits. Returns the labels saved."""
    from rlhf_lab.labelling.server import display_order
    from rlhf_lab.labelling.store import Label

    saved = 0
    while True:
        item = campaign.next_item(labeller)
        if item is None:
            write("Nothing left to label. Thank you!")
            return saved
        order = display_order(labeller.id, item.id, len(item.responses))
        write("\n=== prompt ===\n" + item.prompt)
        for position, index in enumerate(order):
            write(f"--- response {chr(65 + position)} [{position + 1}] ---\n{item.responses[index]}")
        pair = len(order) == 2
        shown = time.monotonic()
        while True:
            answer = read("A better (a), B better (b), tie (t), skip (s), quit (q): " if pair else "ranking, best first (e.g. 2 1 3), skip (s), quit (q): ").strip().lower()
            if answer == "q":
                return saved
            label = Label(item.id, labeller.id, seconds=time.monotonic() - shown)
            if answer == "s":
                label.skip = True
            elif pair and answer in ("a", "b"):
                label.ranking = [order[0], order[1]] if answer == "a" else [order[1], order[0]]
            elif pair and answer == "t":
                label.tie = True
            elif not pair:
                try:
                    positions = [int(x) - 1 for x in answer.replace(",", " ").split()]
                except ValueError:
                    positions = []
                if sorted(positions) != list(range(len(order))):
                    write(f"give each number 1-{len(order)} once")
                    continue
                label.ranking = [order[p] for p in positions]
            else:
                write("a, b, t, s or q")
                continue
            campaign.submit(labeller, label)
            saved += 1
            break


def main(argv: list[str]) -> None:
    """Entry of ``python -m rlhf_lab label``."""
    from rlhf_lab.records import write_jsonl

    args = _parser().parse_args(argv)
    if args.command == "create":
        campaign = _open(args, create=True)
        print(f"campaign '{campaign.name}' in {args.db}: {json.dumps(asdict(campaign.settings))}")
        return
    campaign = _open(args)
    if args.command == "add-labeller":
        try:
            token = campaign.store.add_labeller(campaign.name, args.name, args.role)
        except ValueError as error:
            raise RlhfLabError(str(error)) from None
        print(token)
        print(f"# keep it: only its hash is stored. Link: http://<host>:<port>/{'status' if args.role == 'admin' else ''}#token={token}", file=sys.stderr)
    elif args.command == "add-items":
        items, skipped = read_items(Path(args.file), args.on_bad_record)
        ids = campaign.store.add_items(campaign.name, args.batch, items)
        print(f"{len(ids)} items in batch '{args.batch}' ({len(set(ids))} distinct" + (f"; {skipped} rows skipped)" if skipped else ")"))
    elif args.command == "serve":
        from rlhf_lab.labelling.server import LabelServer

        from rlhf_lab.labelling.addresses import check_address, public_origin

        if args.public_url is not None:
            public_origin(args.public_url, "--public-url")
        check_address(args.host, args.port, "--host", "--port")
        try:
            server = LabelServer(campaign, args.host, args.port, args.public_url)
        except OSError as error:
            raise RlhfLabError(f"--port {args.port}: cannot serve on {args.host}: {error}") from None
        print(f"serving campaign '{campaign.name}' at {server.url} (labellers open {server.url}/#token=<their token>; Ctrl-C stops)")
        server.server.run(sockets=[server.sock])
    elif args.command == "terminal":
        labeller = campaign.store.labeller(campaign.name, args.labeller)
        if labeller is None or labeller.role not in ("crowd", "expert"):
            raise RlhfLabError(f"--labeller {args.labeller}: no crowd or expert labeller of that name in campaign '{campaign.name}'")
        print(f"{terminal_session(campaign, labeller)} labels saved")
    elif args.command == "status":
        print(json.dumps(campaign.status(), indent=2))
    elif args.command == "export":
        out = Path(args.out)
        if out.is_dir() or not out.parent.is_dir():
            raise RlhfLabError(f"--out {out}: {'a directory' if out.is_dir() else f'no directory {out.parent}'}; give the path of the JSONL file to write")
        batches = sorted({item.batch for item in campaign.store.items(campaign.name)})
        if args.batch is not None and args.batch not in batches:
            raise RlhfLabError(f"--batch {args.batch}: no such batch in campaign '{campaign.name}' (batches: {', '.join(batches) or 'none yet'})")
        result = campaign.export(batch=args.batch, method=args.method, exclude_flagged=not args.keep_flagged)
        try:
            write_jsonl(result.records, out)
        except OSError as error:
            raise RlhfLabError(f"--out {out}: cannot write ({error.strerror or error})") from None
        print(f"{len(result.records)} records to {args.out} ({result.unresolved} unresolved, {result.by_expert} decided by an expert)")
