"""A labelling campaign: its settings, who gets which item, when a batch is done, its figures and export.

The web app, the terminal mode and ``feedback=human`` all go through this class, so they assign, store,
route and aggregate in one way.
"""

from __future__ import annotations

import threading
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Optional

from rlhf_lab.labelling.quality import (
    Aggregate,
    QualityThresholds,
    aggregate,
    item_agreement,
    krippendorff_alpha,
    labeller_quality,
    should_route_to_expert,
    units,
)
from rlhf_lab.labelling.store import Item, Label, Labeller, LabelStore

LEASE_SECONDS = 600.0
"""How long an item handed to a labeller is kept for them."""


class NotLeased(Exception):
    """A label for an item this labeller was not handed, or for one whose lease ran out and that has
    all the answers it wants meanwhile: refused, so nobody answers items of their choosing, answers
    for someone else, or pushes an item past its redundancy."""


@dataclass
class CampaignSettings:
    """How a campaign collects and combines labels."""

    redundancy: int = 1
    """Crowd labels wanted per item (k); gold items are shown to every labeller."""
    expert_threshold: float = 0.5
    """An item whose crowd agreement is under this, once k labels are in, goes to an expert (if there is one)."""
    aggregation: str = "majority"
    """How crowd labels become one record: 'majority' or 'dawid_skene'."""
    exclude_flagged: bool = True
    """Leave out the labels of flagged labellers when aggregating."""
    ask_rating: bool = False
    """Also ask for a 1-7 rating of the preferred response."""
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)

    def __post_init__(self) -> None:
        if isinstance(self.thresholds, dict):
            self.thresholds = QualityThresholds(**self.thresholds)
        if not isinstance(self.redundancy, int) or isinstance(self.redundancy, bool) or self.redundancy < 1:
            raise ValueError(f"redundancy must be a whole number >= 1, got {self.redundancy!r}")
        if not isinstance(self.expert_threshold, (int, float)) or not 0.0 <= self.expert_threshold <= 1.0:  # NaN fails both
            raise ValueError(f"expert_threshold is an agreement between 0 and 1, got {self.expert_threshold!r}")
        if self.aggregation not in ("majority", "dawid_skene"):
            raise ValueError(f"aggregation must be 'majority' or 'dawid_skene', got '{self.aggregation}'")


class Campaign:
    """One campaign in a :class:`LabelStore`. ``batch`` limits what is offered to one batch (a round's split)."""

    def __init__(self, store: LabelStore, name: str, settings: Optional[CampaignSettings] = None) -> None:
        self.store, self.name = store, name
        stored = store.ensure_campaign(name, asdict(settings or CampaignSettings()))
        self.settings = settings or CampaignSettings(**stored)
        self.batch: Optional[str] = None
        self._lock = threading.Lock()
        self._held: dict[int, tuple[Item, float]] = {}  # labeller id -> (leased item, expiry)

    # --- labelling ------------------------------------------------------------------------------

    def next_item(self, labeller: Labeller) -> Optional[Item]:
        """The next item to show this labeller (None: nothing left for them).

        An item handed out is leased to that labeller for ``LEASE_SECONDS``: it counts towards the
        item's redundancy, so concurrent labellers get different items instead of all answering the
        first one, and a reload shows the same item again. Leases live in memory: after a restart an
        unanswered item is simply handed out again.
        """
        now = time.monotonic()
        with self._lock:
            held = self._held.get(labeller.id)
            if held is not None and held[1] > now and not self.store.has_label(held[0].id, labeller.id) and held[0].batch == (self.batch or held[0].batch):
                return held[0]
            with closing(self.store.candidates(labeller, self.batch, self.settings.redundancy)) as candidates:
                chosen = self._first_free(candidates, labeller, now)
            if chosen is None:
                self._held.pop(labeller.id, None)
                return None
            self._held[labeller.id] = (chosen, now + LEASE_SECONDS)
            return chosen

    def _first_free(self, candidates, labeller: Labeller, now: float) -> Optional[Item]:
        """The first candidate not already leased up to its redundancy by other labellers."""
        for item, crowd_count in candidates:
            if item.gold is not None or item.repeat_of is not None or item.needs_expert:
                return item  # shown to everyone who may see it: no cap to keep
            leased = sum(
                1 for who, (other, expires) in self._held.items()
                if who != labeller.id and other.id == item.id and expires > now and not self.store.has_label(item.id, who)
            )
            if crowd_count + leased < self.settings.redundancy:
                return item
        return None

    def submit(self, labeller: Labeller, label: Label) -> bool:
        """Store a label durably (True if new); crowd disagreement routes the item to an expert.

        :raises NotLeased: the item is not the one last handed to this labeller (:meth:`next_item`),
            or its lease ran out and it has its crowd answers meanwhile. The same answer sent again is
            not refused (True/False as the store says)."""
        route = None
        if self.settings.expert_threshold > 0 and any(p.role == "expert" for p in self.store.labellers(self.name)):
            item = self.store.item(label.item_id)
            k = len(item.responses)
            route = lambda labels: should_route_to_expert(labels, k, self.settings.redundancy, self.settings.expert_threshold)  # noqa: E731
        # Under the lease lock: a label landing between another labeller's candidate query and its
        # lease check would otherwise be counted neither as a lease nor as an answer.
        with self._lock:
            if not self.store.has_label(label.item_id, labeller.id):  # a repeat is the store's to judge (same answer or a conflict)
                self._check_lease(labeller, label.item_id)
            return self.store.submit(labeller, label, route_disagreement=route)

    def _check_lease(self, labeller: Labeller, item_id: int) -> None:
        held = self._held.get(labeller.id)
        if held is None or held[0].id != item_id:
            raise NotLeased(f"item {item_id} was not handed to '{labeller.name}': answer the item GET /api/next gives")
        item, expires = held
        now = time.monotonic()
        if expires > now or item.gold is not None or item.repeat_of is not None or item.needs_expert or labeller.role != "crowd":
            return
        # A late answer is still welcome while the item wants answers (its lease may have run out
        # during a long read); not once others have given it every answer it wants.
        others = sum(1 for who, (other, until) in self._held.items() if who != labeller.id and other.id == item_id and until > now
                     and not self.store.has_label(item_id, who))
        if self.store.crowd_answers(item_id) + others >= self.settings.redundancy:
            raise NotLeased(f"item {item_id}'s lease to '{labeller.name}' ran out and it has its {self.settings.redundancy} answer(s) meanwhile")

    def progress_of(self, labeller: Labeller) -> dict:
        """Labels this labeller gave, and how far the current batch is."""
        done, total = self.batch_progress(self.batch)
        return {"labelled": len(self.store.labels(self.name, labeller_id=labeller.id)), "batch_done": done, "batch_items": total}

    def batch_progress(self, batch: Optional[str]) -> tuple[int, int]:
        """(items done, items) of a batch; see :meth:`LabelStore.batch_counts`."""
        return self.store.batch_counts(self.name, batch, self.settings.redundancy)

    # --- figures and export ---------------------------------------------------------------------

    def quality(self):
        """Per-labeller figures (gold accuracy, self-consistency, time) with flags."""
        items = {i.id: i for i in self.store.items(self.name)}
        return labeller_quality(self.store.labellers(self.name), items, self.store.labels(self.name), self.settings.thresholds)

    def status(self) -> dict:
        """Progress per batch and the quality figures, as the status page shows them."""
        items = {i.id: i for i in self.store.items(self.name)}
        labels = self.store.labels(self.name)
        people = self.store.labellers(self.name)
        roles = {p.id: p.role for p in people}
        by_item: dict[int, list[Label]] = {}
        for label in labels:
            if roles.get(label.labeller_id) == "crowd":
                by_item.setdefault(label.item_id, []).append(label)
        agreements = [a for a in (item_agreement(ls, len(items[i].responses)) for i, ls in by_item.items()) if a is not None]
        batches = {}
        for batch in sorted({i.batch for i in items.values() if i.source == "campaign"}):
            done, total = self.batch_progress(batch)
            batches[batch] = {"done": done, "items": total}
        return {
            "campaign": self.name,
            "settings": asdict(self.settings),
            "items": sum(i.source == "campaign" for i in items.values()),
            "gold_items": sum(i.gold is not None for i in items.values()),
            "repeated_items": sum(i.repeat_of is not None for i in items.values()),
            "online_items": sum(i.source == "online" for i in items.values()),
            "online": self._online_figures(items, labels),
            "labels": len(labels),
            "needs_expert": sum(i.needs_expert for i in items.values()),
            "batches": batches,
            "krippendorff_alpha": krippendorff_alpha(units(items, labels, roles)),
            "mean_item_agreement": sum(agreements) / len(agreements) if agreements else None,
            "labellers": [asdict(q) for q in self.quality()],
        }

    def online_records(self, batch: str) -> list:
        """Records from the deployment's feedback not used by an earlier batch (claimed by ``batch``)."""
        from rlhf_lab.labelling.quality import online_records

        ids = set(self.store.claim_online(self.name, batch))
        items = [i for i in self.store.items(self.name, source="online") if i.id in ids]
        return online_records(items, [l for l in self.store.labels(self.name) if l.item_id in ids])

    @staticmethod
    def _online_figures(items: dict, labels: list[Label]) -> dict:
        """What a deployment sent: logged items, feedback per kind, the share of thumbs up, the mean rating."""
        online = [l for l in labels if items[l.item_id].source == "online"]
        thumbs = [l.thumb for l in online if l.thumb is not None]
        ratings = [l.rating for l in online if l.rating is not None]
        return {
            "items": sum(i.source == "online" for i in items.values()),
            "with_feedback": len(online),
            "thumbs": len(thumbs),
            "thumbs_up_share": sum(t > 0 for t in thumbs) / len(thumbs) if thumbs else None,
            "ratings": len(ratings),
            "mean_rating": sum(ratings) / len(ratings) if ratings else None,
            "choices": sum(l.ranking is not None for l in online),
        }

    def excluded_ids(self, exclude_flagged: bool) -> set[int]:
        """Labellers whose labels are left out: excluded by hand, and flagged ones if asked."""
        people = self.store.labellers(self.name)
        flagged = {q.name for q in self.quality() if q.flags} if exclude_flagged else set()
        return {p.id for p in people if p.excluded or p.name in flagged}

    def export(self, batch: Optional[str] = None, method: Optional[str] = None, exclude_flagged: Optional[bool] = None) -> Aggregate:
        """Preference records of a batch (or of all), aggregated; ``meta`` carries each record's agreement."""
        method = method or self.settings.aggregation
        exclude = self.settings.exclude_flagged if exclude_flagged is None else exclude_flagged
        items = self.store.items(self.name, batch=batch, source="campaign")
        roles = {p.id: p.role for p in self.store.labellers(self.name)}
        return aggregate(items, self.store.labels(self.name, batch=batch), roles, self.excluded_ids(exclude), method=method)
