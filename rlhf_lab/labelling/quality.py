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

from rlhf_lab.records import PreferenceRecord
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
    coders = len(values)
    if coders < 2:
        return None
    return sum(count * (count - 1) for count in Counter(values).values()) / (coders * (coders - 1))


def item_agreement(labels: Iterable[Label], k: int) -> Optional[float]:
    """Share of labeller pairs giving the same judgement, averaged over the item's pairs; None under 2 labels."""
    by_pair = defaultdict(list)
    for label in labels:
        for pair, value in pair_judgements(label, k).items():
            by_pair[pair].append(value)
    shares = [share for share in (_agreement_of(values) for values in by_pair.values()) if share is not None]
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
    scores = (1.0 if judgement == truth[pair] else 0.5 if judgement == 0 else 0.0 for pair, judgement in judgements.items())
    return sum(scores) / len(judgements)


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


def _flags(quality: LabellerQuality, thresholds: QualityThresholds) -> list[str]:
    """Why a labeller's figures fall under the thresholds (a figure on too few labels flags nothing)."""
    flags = []
    if (quality.gold_accuracy is not None and quality.gold_labels >= thresholds.min_gold_labels
            and quality.gold_accuracy < thresholds.min_gold_accuracy):
        flags.append(f"gold accuracy {quality.gold_accuracy:.2f} < {thresholds.min_gold_accuracy}")
    if (quality.self_consistency is not None and quality.repeats >= thresholds.min_repeats
            and quality.self_consistency < thresholds.min_self_consistency):
        flags.append(f"self-consistency {quality.self_consistency:.2f} < {thresholds.min_self_consistency}")
    if quality.median_seconds is not None and quality.median_seconds < thresholds.min_median_seconds:
        flags.append(f"median {quality.median_seconds:.1f} s per label < {thresholds.min_median_seconds} s")
    return flags


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
        quality = LabellerQuality(person.name, person.role, labels=len(mine), skips=sum(label.skip for label in mine), excluded=person.excluded)
        on_gold = [label for label in mine if items[label.item_id].gold is not None]
        scores = [score for score in (gold_score(label, items[label.item_id].gold) for label in on_gold) if score is not None]
        quality.gold_labels = len(scores)
        quality.gold_accuracy = sum(scores) / len(scores) if scores else None
        answers = {label.item_id: label for label in mine}
        same = []
        for label in mine:
            original = items[label.item_id].repeat_of
            if original is not None and original in answers:
                k = len(items[label.item_id].responses)
                first, again = pair_judgements(answers[original], k), pair_judgements(label, k)
                same.extend(first[pair] == again[pair] for pair in first if pair in again)
                quality.repeats += 1
        quality.self_consistency = sum(same) / len(same) if same else None
        seconds = [label.seconds for label in mine if label.seconds is not None]
        quality.median_seconds = statistics.median(seconds) if seconds else None
        quality.flags = _flags(quality, thresholds)
        report.append(quality)
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
    posterior = {unit: (sum(vote > 0 for _, vote in unit_votes) + 0.5) / (len(unit_votes) + 1.0) for unit, unit_votes in votes.items() if unit_votes}
    labellers = {who for unit_votes in votes.values() for who, _ in unit_votes}
    for _ in range(iterations):
        prior = (sum(posterior.values()) + 1.0) / (len(posterior) + 2.0)
        # confusion[who][true][vote]: expected counts, true/vote as 0 (first better) or 1.
        confusion = {who: [[smoothing, smoothing], [smoothing, smoothing]] for who in labellers}
        for unit, p_first in posterior.items():
            for who, vote in votes[unit]:
                column = 0 if vote > 0 else 1
                confusion[who][0][column] += p_first
                confusion[who][1][column] += 1.0 - p_first
        for who in labellers:
            for true in (0, 1):
                total = sum(confusion[who][true])
                confusion[who][true] = [count / total for count in confusion[who][true]]
        updated = {}
        for unit in posterior:
            log_first, log_second = math.log(prior), math.log(1.0 - prior)
            for who, vote in votes[unit]:
                column = 0 if vote > 0 else 1
                log_first += math.log(confusion[who][0][column])
                log_second += math.log(confusion[who][1][column])
            updated[unit] = 1.0 / (1.0 + math.exp(log_second - log_first))
        posterior = updated
    return posterior


@dataclass
class Aggregate:
    """The records of an aggregation and what it could not resolve."""

    records: list[PreferenceRecord]
    unresolved: int = 0
    by_expert: int = 0


def _all_pairs(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def _crowd_votes(items: list[Item], by_item: dict[int, list[Label]], roles: dict[int, str]) -> dict:
    """The crowd's non-tie judgements as Dawid-Skene votes: ``{(item id, pair): [(labeller id, +1|-1), ...]}``."""
    votes = {}
    for item in items:
        for label in by_item.get(item.id, []):
            if roles.get(label.labeller_id) != "crowd":
                continue
            for pair, judgement in pair_judgements(label, len(item.responses)).items():
                if judgement != 0:
                    votes.setdefault((item.id, pair), []).append((label.labeller_id, judgement))
    return votes


def _majority_decisions(deciders: list[Label], k: int) -> dict[tuple[int, int], int]:
    """Each pair's decision (+1 or -1) by the sum of the deciders' judgements; a pair whose votes tie is left out."""
    decisions = {}
    for pair in _all_pairs(k):
        total = sum(pair_judgements(label, k).get(pair, 0) for label in deciders)
        if total != 0:
            decisions[pair] = 1 if total > 0 else -1
    return decisions


def _posterior_decisions(item_id: int, k: int, posterior: dict) -> dict[tuple[int, int], int]:
    """Each pair's decision by its Dawid-Skene P(first better); a pair at exactly 1/2 (or never voted on) is left out."""
    decisions = {}
    for pair in _all_pairs(k):
        p_first = posterior.get((item_id, pair))
        if p_first is not None and p_first != 0.5:
            decisions[pair] = 1 if p_first > 0.5 else -1
    return decisions


def _copeland_ranking(decisions: dict[tuple[int, int], int], k: int) -> list[int]:
    """Responses best first by pairs won, an undecided pair counting 1/2 to each side; ties go to the lower index."""
    wins = [0.0] * k
    for (i, j), decision in decisions.items():
        wins[i if decision > 0 else j] += 1.0
    for i, j in _all_pairs(k):
        if (i, j) not in decisions:
            wins[i] += 0.5
            wins[j] += 0.5
    return sorted(range(k), key=lambda response: (-wins[response], response))


def aggregate(items: list[Item], labels: list[Label], roles: dict[int, str], excluded: set[int] = frozenset(),
              method: str = "majority", annotator: str = "human") -> Aggregate:
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
    posterior = dawid_skene(_crowd_votes(items, by_item, roles)) if method == "dawid_skene" else {}
    result = Aggregate([])
    for item in items:
        if item.repeat_of is not None or len(item.responses) < 2:
            continue
        answers = by_item.get(item.id, [])
        experts = [label for label in answers if roles.get(label.labeller_id) == "expert"]
        crowd = [label for label in answers if roles.get(label.labeller_id) == "crowd"]
        if not (experts or crowd):
            continue
        k = len(item.responses)
        if experts:
            decisions = _majority_decisions(experts, k)
        elif method == "dawid_skene":
            decisions = _posterior_decisions(item.id, k, posterior)
        else:
            decisions = _majority_decisions(crowd, k)
        if not decisions:
            result.unresolved += 1
            continue
        result.by_expert += bool(experts)
        decided_by = "expert" if experts else method
        result.records.append(
            PreferenceRecord(
                prompt=item.prompt, responses=list(item.responses), ranking=_copeland_ranking(decisions, k), annotator=f"{annotator}:{decided_by}",
                meta={"item_id": item.id, "labels": len(answers), "agreement": item_agreement(crowd, k), "decided_by": decided_by},
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
    answered = [label for label in labels if not label.skip]
    if len(answered) < max(redundancy, 2):
        return False
    agreement = item_agreement(answered, k)
    return agreement is not None and agreement < threshold
