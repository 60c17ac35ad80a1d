"""``feedback=human``: people rank the candidates in the labelling web app; the run waits for them.

For each split the source adds the candidates to a campaign in a SQLite database (items keyed by their
content, so a restarted run finds the items and labels of the first), serves the app, logs a link per
labeller and the status page, waits until every item of the split is labelled (``redundancy`` crowd
labels each, expert labels where crowd disagreement routed an item), and returns the aggregated records.
Nothing is lost on a restart: labels are in the database the moment the page is told they are saved.

``bot_labellers: n`` adds n simulated annotators that label through the app's HTTP API, so the whole
path can run (and be tested) without a person; they need a task with a hidden utility.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

from rlhf_lab.feedback.selection_config import SelectionConfig
from rlhf_lab import hookimpl
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.labelling.addresses import check_address, public_origin
from rlhf_lab.records import PreferenceRecord

log = logging.getLogger("rlhf_lab")

REPEAT_GAP = 10
"""Items between an item and its repeat."""


@dataclass
class HumanFeedbackConfig(SelectionConfig):
    """Schema of ``feedback=human``."""

    # The label database is not an input of the preferences artifact but where its labels are kept: its
    # growing content must not change the cache key (a restarted round would otherwise start anew).
    unhashed_files: ClassVar[tuple[str, ...]] = ("db",)

    name: str = "human"
    db: str = "outputs/labelling/labels.db"
    """SQLite database of the campaign (created if missing; tokens are kept beside it in <db>.tokens.json)."""
    campaign: str = "default"
    """Campaign name inside the database."""
    host: str = "127.0.0.1"
    """Address the app binds to; anything but loopback exposes it to the network."""
    port: int = 8765
    """Port of the app (0: any free port)."""
    public_url: Optional[str] = None
    """The address labellers open when it is not host:port (a proxy, or a name of the labellers' network),
    e.g. https://label.example.org; the links use it, and pages of any other origin cannot write."""
    labellers: list[str] = field(default_factory=lambda: ["labeller1"])
    """People who label, as 'name' or 'name:role' (role crowd or expert); each gets a link with a token."""
    responses_per_prompt: int = 2
    """K candidates per prompt: 2 is a choice between A and B, more is a ranking."""
    rounds: int = 1
    """Times each training prompt is sent for labelling (fresh candidates each time)."""
    redundancy: int = 1
    """Crowd labels per item (k)."""
    expert_threshold: float = 0.5
    """Crowd agreement under which an item goes to an expert (when there is an expert labeller)."""
    aggregation: str = "majority"
    """'majority' or 'dawid_skene'."""
    exclude_flagged: bool = True
    """Leave out the labels of labellers flagged by the quality checks."""
    quota: float = 1.0
    """Share of each split's items that must be done before the run goes on (the records come from every labelled item)."""
    include_online: bool = True
    """Add the training records that a deployment's feedback gave since the last round (docs/labelling.md)."""
    ask_rating: bool = False
    """Also ask for a 1-7 rating (kept in the database; the records use the ranking)."""
    gold_fraction: float = 0.0
    """Share of items whose gold answer (the task's utility order) is known, to score labellers; needs a task utility."""
    repeat_fraction: float = 0.0
    """Share of items shown again to the same labeller, for self-consistency."""
    min_gold_accuracy: float = 0.6
    """Flag a labeller whose accuracy on gold items is under this."""
    min_self_consistency: float = 0.5
    """Flag a labeller who agrees with themselves less often than this on repeated items."""
    bot_labellers: int = 0
    """Simulated annotators labelling through the app's API (beside or instead of people); need a task utility."""
    bot_beta: float = 0.3
    """Mean rationality temperature of the bots, spread as feedback=simulated spreads its annotators."""
    poll_seconds: float = 2.0
    """How often the run checks whether the split is labelled."""
    timeout_minutes: Optional[float] = None
    """Give up waiting after this long (the labels so far stay in the database); null waits for ever."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.responses_per_prompt < 2 or self.rounds < 1 or self.redundancy < 1:
            raise ValueError("feedback=human needs responses_per_prompt >= 2, rounds >= 1, redundancy >= 1")
        if not 0 <= self.gold_fraction <= 1 or not 0 <= self.repeat_fraction <= 1 or not 0 < self.quota <= 1:
            raise ValueError("gold_fraction and repeat_fraction must be in [0, 1], quota in (0, 1]")
        if self.aggregation not in ("majority", "dawid_skene"):
            raise ValueError(f"aggregation must be 'majority' or 'dawid_skene', got '{self.aggregation}'")
        if not 0 <= self.port <= 65535 or self.bot_labellers < 0 or not self.bot_beta > 0 or not self.poll_seconds > 0:
            raise ValueError("port must be 0-65535, bot_labellers >= 0, bot_beta > 0, poll_seconds > 0")
        seen = set()
        for spec in self.labellers:
            name, _, role = spec.partition(":")
            if not name or (role or "crowd") not in ("crowd", "expert"):
                raise ValueError(f"labeller '{spec}': give 'name' or 'name:role' with role crowd or expert")
            if name in seen:  # one identity, one token: two links for it would be one person's
                raise ValueError(f"labeller '{name}' is listed twice; each person is listed once")
            seen.add(name)
        if self.public_url is not None:
            try:
                public_origin(self.public_url, "public_url")
            except RlhfLabError as error:  # a schema's checks raise ValueError, which names the config group
                raise ValueError(str(error)) from None
        if not self.labellers and not self.bot_labellers:
            raise ValueError("feedback=human needs at least one labeller or bot labeller")


class TokenFile:
    """The labellers' tokens of a database, kept beside it (mode 0600): the store holds only hashes."""

    def __init__(self, db: Path) -> None:
        self.path = db.with_name(db.name + ".tokens.json")

    def load(self) -> dict:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())
        except ValueError:
            raise RlhfLabError(f"{self.path}: the token file is corrupt; delete it and the labellers of the campaign to start again") from None

    def save(self, tokens: dict) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(tokens, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)


class HumanFeedback:
    """Collects rankings from people (and bots) through the labelling app."""

    needs_candidates = True

    def __init__(self, cfg: HumanFeedbackConfig, task) -> None:
        if (cfg.bot_labellers or cfg.gold_fraction) and task.utility is None:
            raise RlhfLabError("feedback.bot_labellers and feedback.gold_fraction need a task with a hidden utility; this task has none")
        if Path(cfg.db).is_dir():
            raise RlhfLabError(f"feedback.db: {cfg.db} is a directory; give the path of the label database file")
        check_address(cfg.host, cfg.port, "feedback.host", "feedback.port")
        self.cfg, self.utility = cfg, task.utility
        self.responses_per_prompt, self.rounds = cfg.responses_per_prompt, cfg.rounds
        self.stats: dict[str, float] = {}
        self._bot_errors: list[str] = []

    def _campaign(self):
        from rlhf_lab.labelling.campaign import Campaign, CampaignSettings
        from rlhf_lab.labelling.quality import QualityThresholds
        from rlhf_lab.labelling.store import LabelStore

        c = self.cfg
        settings = CampaignSettings(
            redundancy=c.redundancy, expert_threshold=c.expert_threshold, aggregation=c.aggregation,
            exclude_flagged=c.exclude_flagged, ask_rating=c.ask_rating,
            thresholds=QualityThresholds(min_gold_accuracy=c.min_gold_accuracy, min_self_consistency=c.min_self_consistency),
        )
        try:
            store = LabelStore(Path(c.db))
        except Exception as error:  # sqlite3.Error, OSError: an unusable path
            raise RlhfLabError(f"feedback.db: cannot open the label database {c.db}: {error}") from None
        return Campaign(store, c.campaign, settings)

    def _tokens(self, campaign) -> dict:
        """Every labeller's token (created on first use, kept in the token file)."""
        tokens_file = TokenFile(Path(self.cfg.db))
        tokens = tokens_file.load()
        wanted = [("admin", "admin")] + [(s.partition(":")[0], s.partition(":")[2] or "crowd") for s in self.cfg.labellers]
        wanted += [(f"bot{i}", "crowd") for i in range(self.cfg.bot_labellers)]
        changed = False
        for name, role in wanted:
            key = f"{self.cfg.campaign}/{name}"
            if campaign.store.labeller(campaign.name, name) is None:
                tokens[key] = campaign.store.add_labeller(campaign.name, name, role)
                changed = True
            elif key not in tokens:
                raise RlhfLabError(f"labeller '{name}' of campaign '{campaign.name}' exists in {self.cfg.db} but its token is not in {tokens_file.path}")
        if changed:
            tokens_file.save(tokens)
        return {name: tokens[f"{self.cfg.campaign}/{name}"] for name, _ in wanted}

    def _items(self, prompts: list[str], candidates: list[list[str]], batch: str, seed: int) -> list[dict]:
        from rlhf_lab.labelling.store import item_key

        rng = random.Random(seed)
        items, repeats = [], []
        for prompt, responses in zip(prompts, candidates):
            key = item_key(batch, prompt, responses)
            item = {"prompt": prompt, "responses": list(responses), "key": key}
            if self.cfg.gold_fraction and rng.random() < self.cfg.gold_fraction:
                utilities = [self.utility(prompt, r) for r in responses]
                item["gold"] = sorted(range(len(responses)), key=lambda i: -utilities[i])
            items.append(item)
            # A repeat comes REPEAT_GAP items later (labellers get items in order), not straight after.
            if repeats and len(items) - repeats[0][0] >= REPEAT_GAP:
                items.append(repeats.pop(0)[1])
            if self.cfg.repeat_fraction and rng.random() < self.cfg.repeat_fraction:
                repeats.append((len(items), {"prompt": prompt, "responses": list(responses), "key": "repeat:" + key, "repeat_of_key": key}))
        return items + [r for _, r in repeats]

    def collect(self, prompts: list[str], candidates: list[list[str]], kind: str, seed: int, split: str = "train") -> list[PreferenceRecord]:
        from rlhf_lab.labelling.server import LabelServer

        if kind != "ranking":
            raise RlhfLabError("feedback=human collects choices and rankings; a pointwise reward model (ratings) cannot use it")
        campaign = self._campaign()
        tokens = self._tokens(campaign)
        batch = f"{split}-seed{seed}"
        campaign.store.add_items(campaign.name, batch, self._items(prompts, candidates, batch, seed))
        campaign.batch = batch
        try:
            server = LabelServer(campaign, self.cfg.host, self.cfg.port, self.cfg.public_url).start()
        except OSError as error:
            raise RlhfLabError(f"feedback.port: cannot serve the labelling app on {self.cfg.host}:{self.cfg.port}: {error}") from None
        stop = threading.Event()
        bots = self._start_bots(server.url, tokens, seed, stop)
        try:
            self._announce((self.cfg.public_url or server.url).rstrip("/"), tokens, campaign, batch)
            self._wait(campaign, batch)
        finally:
            stop.set()
            for thread in bots:
                thread.join(timeout=60)
            server.stop()
        result = campaign.export(batch=batch)
        status = campaign.status()
        self.stats.update({
            f"feedback/{split}_unresolved": result.unresolved,
            f"feedback/{split}_by_expert": result.by_expert,
            f"feedback/{split}_labels": sum(r.meta["labels"] for r in result.records),
        })
        if split == "train" and self.cfg.include_online:
            online = campaign.online_records(batch)
            result.records.extend(online)
            self.stats["feedback/train_online_records"] = len(online)
        if status["krippendorff_alpha"] is not None:
            self.stats["feedback/krippendorff_alpha"] = status["krippendorff_alpha"]
        flagged = [q["name"] for q in status["labellers"] if q["flags"]]
        if flagged:
            log.warning("feedback: flagged labellers %s%s", flagged, " (their labels are left out)" if self.cfg.exclude_flagged else "")
        campaign.store.close()
        if not result.records:
            raise RlhfLabError(f"feedback=human: no item of batch '{batch}' got a decided label (unresolved: {result.unresolved})")
        return result.records

    def _start_bots(self, url: str, tokens: dict, seed: int, stop: threading.Event) -> list[threading.Thread]:
        from rlhf_lab.labelling.client import BotLabeller, LabelClient

        n, threads = self.cfg.bot_labellers, []
        for i in range(n):
            beta = self.cfg.bot_beta * (0.5 + i / (n - 1)) if n > 1 else self.cfg.bot_beta
            bot = BotLabeller(LabelClient(url, tokens[f"bot{i}"]), self.utility, beta, seed * 1000 + i)
            thread = threading.Thread(target=self._run_bot, args=(bot, stop), daemon=True, name=f"rlhf_lab-bot{i}")
            thread.start()
            threads.append(thread)
        return threads

    def _run_bot(self, bot, stop: threading.Event) -> None:
        try:
            bot.run(should_stop=stop.is_set)
        except Exception as error:  # reported by _wait, which would otherwise wait for ever
            self._bot_errors.append(f"{type(error).__name__}: {error}")

    def _announce(self, url: str, tokens: dict, campaign, batch: str) -> None:
        done, total = campaign.batch_progress(batch)
        log.info("feedback=human: %d/%d items of '%s' labelled; the labelling app is at %s", done, total, batch, url)
        for spec in self.cfg.labellers:
            name = spec.partition(":")[0]
            log.info("  labeller %s: %s/#token=%s", name, url, tokens[name])
        log.info("  status page (admin): %s/status#token=%s", url, tokens["admin"])

    def _wait(self, campaign, batch: str) -> None:
        started, last_report = time.monotonic(), 0.0
        while True:
            done, total = campaign.batch_progress(batch)
            if done >= math.ceil(self.cfg.quota * total):
                return
            if self._bot_errors:
                raise RlhfLabError(f"feedback=human: a bot labeller failed: {self._bot_errors[0]}")
            now = time.monotonic()
            if self.cfg.timeout_minutes is not None and now - started > 60 * self.cfg.timeout_minutes:
                raise RlhfLabError(
                    f"feedback=human: {done}/{total} items of '{batch}' labelled after {self.cfg.timeout_minutes} minutes "
                    f"(feedback.timeout_minutes); the labels are kept in {self.cfg.db}: run the same command again to go on"
                )
            if now - last_report > 60:
                log.info("feedback=human: %d/%d items of '%s' labelled", done, total, batch)
                last_report = now
            time.sleep(self.cfg.poll_seconds)


@hookimpl
def rlhf_lab_register_feedback_sources(register):
    register("human", HumanFeedback, HumanFeedbackConfig)
