"""Quality of human labels, and their aggregation into preference records.

Every answer is read as pairwise judgements: for responses i < j of an item, +1 (i better), -1
(j better) or 0 (tie). On these:

- per-item agreement: the share of pairs of labellers that gave the same judgement (averaged over the
  item's response pairs);
- Krippendorff's alpha (nominal) over all (item, pair) units, which allows any number of labellers per
  unit: ``alpha = 1 - D_o / D_e`` from the coincidence matrix (Krippendorff, Content Analysis, ch. 12);
- each labeller's accuracy on gold items (a tie scores 1/2), self-consistency on repeated items, and
  the median seconds per label; a labeller below the thresholds is flagged;
- aggregation per pair by majority, or by Dawid and Skene's EM (1979) with a 2x2 confusion matrix per
  labeller (tie votes carry no information there); a ranking of K responses is the Copeland order of
  its pair decisions. Expert labels, where an item has any, decide that item.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional

from rlhf_lab.feedback.records import PreferenceRecord
from rlhf_lab.labelling.store import Item, Label


def pair_judgements(label: Label, k: int) -> dict[tuple[int, int], int]:
    """The label's judgement on every pair (i, j), i < j: +1 if i is better, -1 if j is, 0 for a tie."""
    if label.skip or (label.ranking is None and not label.tie):
        return {}
    if label.tie:
        return {(i, j): 0 for i in range(k) for j in range(i + 1, k)}
    position = {response: rank for rank, response in enumerate(label.ranking)}
    return {(i, j): (1 if position[i] < position[j] else -1) for i in range(k) for j in range(i + 1, k)}


def _agreement_of(values: list[int]) -> Optional[float]:
    m = len(values)
    if m < 2:
        return None
    return sum(n * (n - 1) for n in Counter(values).values()) / (m * (m - 1))


def item_agreement(labels: Iterable[Label], k: int) -> Optional[float]:
    """Share of labeller pairs giving the same judgement, averaged over the item's pairs; None under 2 labels."""
    by_pair = defaultdict(list)
    for label in labels:
        for pair, value in pair_judgements(label, k).items():
            by_pair[pair].append(value)
    shares = [s for s in (_agreement_of(v) for v in by_pair.values()) if s is not None]
    return sum(shares) / len(shares) if shares else None


def krippendorff_alpha(units: Iterable[list]) -> Optional[float]:
    """Krippendorff's alpha for nominal values; each unit is the list of values its coders gave.

    Units with fewer than two values are not pairable and are left out. None when there is no
    pairable unit or no variation at all (expected disagreement 0).
    """
    coincidence: dict[tuple, float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                pairs = n_c * (n_k - 1) if c == k else n_c * n_k
                coincidence[(c, k)] += pairs / (m - 1)
    totals: dict = defaultdict(float)
    for (c, _), value in coincidence.items():
        totals[c] += value
    n = sum(totals.values())
    if n <= 1:
        return None
    observed = sum(v for (c, k), v in coincidence.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k) / (n - 1)
    if expected == 0:
        return None
    return 1.0 - observed / expected


def gold_score(label: Label, gold: list[int]) -> Optional[float]:
    """Agreement of one label with the gold ranking, over its pairs: 1 right, 1/2 tie, 0 wrong."""
    judgements = pair_judgements(label, len(gold))
    if not judgements:
        return None
    truth = pair_judgements(Label(label.item_id, label.labeller_id, ranking=gold), len(gold))
    return sum(1.0 if v == truth[p] else 0.5 if v == 0 else 0.0 for p, v in judgements.items()) / len(judgements)


@dataclass
class QualityThresholds:
    """When a labeller is flagged."""

    min_gold_accuracy: float = 0.6
    min_gold_labels: int = 3
    min_self_consistency: float = 0.5
    min_repeats: int = 2
    min_median_seconds: float = 0.0


@dataclass
class LabellerQuality:
    """One labeller's figures."""

    name: str
    role: str
    labels: int = 0
    skips: int = 0
    gold_labels: int = 0
    gold_accuracy: Optional[float] = None
    repeats: int = 0
    self_consistency: Optional[float] = None
    median_seconds: Optional[float] = None
    excluded: bool = False
    flags: list[str] = field(default_factory=list)


def labeller_quality(labellers, items: dict[int, Item], labels: list[Label], thresholds: QualityThresholds) -> list[LabellerQuality]:
    """Figures per labeller (crowd and expert) with the reasons each is flagged, if any."""
    by_labeller = defaultdict(list)
    for label in labels:
        by_labeller[label.labeller_id].append(label)
    report = []
    for person in labellers:
        if person.role not in ("crowd", "expert"):
            continue
        mine = by_labeller.get(person.id, [])
        q = LabellerQuality(person.name, person.role, labels=len(mine), skips=sum(l.skip for l in mine), excluded=person.excluded)
        scores = [s for s in (gold_score(l, items[l.item_id].gold) for l in mine if items[l.item_id].gold is not None) if s is not None]
        q.gold_labels = len(scores)
        q.gold_accuracy = sum(scores) / len(scores) if scores else None
        answers = {l.item_id: l for l in mine}
        same = []
        for label in mine:
            original = items[label.item_id].repeat_of
            if original is not None and original in answers:
                k = len(items[label.item_id].responses)
                first, again = pair_judgements(answers[original], k), pair_judgements(label, k)
                same.extend(first[p] == again[p] for p in first if p in again)
                q.repeats += 1
        q.self_consistency = sum(same) / len(same) if same else None
        seconds = [l.seconds for l in mine if l.seconds is not None]
        q.median_seconds = statistics.median(seconds) if seconds else None
        if q.gold_accuracy is not None and q.gold_labels >= thresholds.min_gold_labels and q.gold_accuracy < thresholds.min_gold_accuracy:
            q.flags.append(f"gold accuracy {q.gold_accuracy:.2f} < {thresholds.min_gold_accuracy}")
        if q.self_consistency is not None and q.repeats >= thresholds.min_repeats and q.self_consistency < thresholds.min_self_consistency:
            q.flags.append(f"self-consistency {q.self_consistency:.2f} < {thresholds.min_self_consistency}")
        if q.median_seconds is not None and q.median_seconds < thresholds.min_median_seconds:
            q.flags.append(f"median {q.median_seconds:.1f} s per label < {thresholds.min_median_seconds} s")
        report.append(q)
    return report


def units(items: dict[int, Item], labels: list[Label], roles: dict[int, str]) -> list[list[int]]:
    """The (item, pair) units of crowd judgements, for Krippendorff's alpha."""
    values = defaultdict(list)
    for label in labels:
        if roles.get(label.labeller_id) != "crowd":
            continue
        for pair, value in pair_judgements(label, len(items[label.item_id].responses)).items():
            values[(label.item_id, pair)].append(value)
    return list(values.values())


def dawid_skene(votes: dict, iterations: int = 50, smoothing: float = 1.0) -> dict:
    """P(first better) per unit from binary votes ``{unit: [(labeller, +1|-1), ...]}``.

    Each labeller has a 2x2 confusion matrix (true class -> vote), each with ``smoothing`` pseudo-counts;
    EM starts from the vote shares.
    """
    posterior = {u: (sum(v > 0 for _, v in vs) + 0.5) / (len(vs) + 1.0) for u, vs in votes.items() if vs}
    labellers = {who for vs in votes.values() for who, _ in vs}
    for _ in range(iterations):
        prior = (sum(posterior.values()) + 1.0) / (len(posterior) + 2.0)
        # confusion[who][true][vote]: expected counts, true/vote as 0 (first better) or 1.
        confusion = {who: [[smoothing, smoothing], [smoothing, smoothing]] for who in labellers}
        for u, p in posterior.items():
            for who, v in votes[u]:
                column = 0 if v > 0 else 1
                confusion[who][0][column] += p
                confusion[who][1][column] += 1.0 - p
        for who in labellers:
            for true in (0, 1):
                total = sum(confusion[who][true])
                confusion[who][true] = [c / total for c in confusion[who][true]]
        updated = {}
        for u in posterior:
            log_first, log_second = math.log(prior), math.log(1.0 - prior)
            for who, v in votes[u]:
                column = 0 if v > 0 else 1
                log_first += math.log(confusion[who][0][column])
                log_second += math.log(confusion[who][1][column])
            updated[u] = 1.0 / (1.0 + math.exp(log_second - log_first))
        posterior = updated
    return posterior


@dataclass
class Aggregate:
    """The records of an aggregation and what it could not resolve."""

    records: list[PreferenceRecord]
    unresolved: int = 0
    by_expert: int = 0


def aggregate(items: list[Item], labels: list[Label], roles: dict[int, str], excluded: set[int] = frozenset(), method: str = "majority", annotator: str = "human") -> Aggregate:
    """Preference records, one per item (repeats left out), from the labels of included labellers.

    Each pair is decided by the experts' majority when the item has expert labels, else by the crowd's
    majority (``method="majority"``) or by Dawid-Skene (``method="dawid_skene"``); a pair whose votes
    tie stays undecided, and an item with no decided pair is unresolved. ``meta`` holds the item id,
    the number of labels, the per-item agreement, and who decided.
    """
    if method not in ("majority", "dawid_skene"):
        raise ValueError(f"aggregation must be 'majority' or 'dawid_skene', got '{method}'")
    by_item = defaultdict(list)
    for label in labels:
        if label.labeller_id not in excluded and not label.skip:
            by_item[label.item_id].append(label)
    crowd_votes = {}
    for item in items:
        for label in by_item.get(item.id, []):
            if roles.get(label.labeller_id) == "crowd":
                for pair, v in pair_judgements(label, len(item.responses)).items():
                    if v != 0:
                        crowd_votes.setdefault((item.id, pair), []).append((label.labeller_id, v))
    posterior = dawid_skene(crowd_votes) if method == "dawid_skene" else {}
    result = Aggregate([])
    for item in items:
        if item.repeat_of is not None or len(item.responses) < 2:
            continue
        mine = by_item.get(item.id, [])
        experts = [l for l in mine if roles.get(l.labeller_id) == "expert"]
        deciders = experts or [l for l in mine if roles.get(l.labeller_id) == "crowd"]
        if not deciders:
            continue
        k = len(item.responses)
        decisions = {}
        for pair in ((i, j) for i in range(k) for j in range(i + 1, k)):
            if not experts and method == "dawid_skene":
                p = posterior.get((item.id, pair))
                if p is not None and p != 0.5:
                    decisions[pair] = 1 if p > 0.5 else -1
                continue
            total = sum(pair_judgements(l, k).get(pair, 0) for l in deciders)
            if total != 0:
                decisions[pair] = 1 if total > 0 else -1
        if not decisions:
            result.unresolved += 1
            continue
        wins = [0.0] * k
        for (i, j), v in decisions.items():
            wins[i if v > 0 else j] += 1.0
        for i in range(k):
            for j in range(i + 1, k):
                if (i, j) not in decisions:
                    wins[i] += 0.5
                    wins[j] += 0.5
        ranking = sorted(range(k), key=lambda r: (-wins[r], r))
        result.by_expert += bool(experts)
        agreement = item_agreement([l for l in mine if roles.get(l.labeller_id) == "crowd"], k)
        result.records.append(
            PreferenceRecord(
                prompt=item.prompt, responses=list(item.responses), ranking=ranking, annotator=f"{annotator}:{'expert' if experts else method}",
                meta={"item_id": item.id, "labels": len(mine), "agreement": agreement, "decided_by": "expert" if experts else method},
                response_ids=item.response_ids,
            )
        )
    return result


def online_records(items: list[Item], labels: list[Label]) -> list[PreferenceRecord]:
    """Records from a deployment's feedback: a choice between two logged responses is a ranking of the
    two; thumbs (or 1-7 ratings) on different responses to one prompt give one record per pair of
    responses with different scores, the higher preferred. Thumbs and ratings are not mixed."""
    answer = {label.item_id: label for label in labels}
    records, scored = [], defaultdict(list)
    for item in items:
        label = answer.get(item.id)
        if label is None:
            continue
        if label.ranking is not None and len(item.responses) == 2:
            records.append(PreferenceRecord(prompt=item.prompt, responses=list(item.responses), ranking=list(label.ranking),
                                            annotator="online:choice", meta={"item_ids": [item.id]}))
        elif len(item.responses) == 1 and (label.thumb is not None or label.rating is not None):
            kind, score = ("thumb", label.thumb) if label.thumb is not None else ("rating", label.rating)
            scored[(item.prompt, kind)].append((score, item.responses[0], item.id))
    for (prompt, kind), answers in scored.items():
        for a in range(len(answers)):
            for b in range(a + 1, len(answers)):
                (score_a, text_a, id_a), (score_b, text_b, id_b) = answers[a], answers[b]
                if score_a != score_b and text_a != text_b:
                    better, worse = (text_a, text_b) if score_a > score_b else (text_b, text_a)
                    records.append(PreferenceRecord(prompt=prompt, responses=[better, worse], ranking=[0, 1],
                                                    annotator=f"online:{kind}", meta={"item_ids": [id_a, id_b]}))
    return records


def should_route_to_expert(labels: list[Label], k: int, redundancy: int, threshold: float) -> bool:
    """Once ``redundancy`` crowd labels are in, an item whose agreement is under ``threshold`` goes to an expert."""
    answered = [l for l in labels if not l.skip]
    if len(answered) < max(redundancy, 2):
        return False
    agreement = item_agreement(answered, k)
    return agreement is not None and agreement < threshold
