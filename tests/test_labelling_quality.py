"""Quality figures and aggregation of human labels (rlhf_lab/labelling/quality.py), against numbers
worked out by hand in the comments."""

from __future__ import annotations

import pytest

from rlhf_lab.labelling.quality import (
    QualityThresholds,
    aggregate,
    dawid_skene,
    gold_score,
    item_agreement,
    krippendorff_alpha,
    labeller_quality,
    pair_judgements,
    should_route_to_expert,
    units,
)
from rlhf_lab.labelling.store import Item, Label, Labeller


def item(id, k=2, gold=None, repeat_of=None, prompt="p"):
    return Item(id, "c", "b", prompt, [f"r{i}" for i in range(k)], gold=gold, repeat_of=repeat_of)


def rank(item_id, who, ranking):
    return Label(item_id, who, ranking=ranking)


def test_pair_judgements_read_rankings_ties_and_skips():
    assert pair_judgements(rank(1, 1, [2, 0, 1]), 3) == {(0, 1): 1, (0, 2): -1, (1, 2): -1}
    assert pair_judgements(Label(1, 1, tie=True), 2) == {(0, 1): 0}
    assert pair_judgements(Label(1, 1, skip=True), 2) == {}


def test_item_agreement_is_the_share_of_agreeing_labeller_pairs():
    # Three labellers on one pair: votes +1, +1, -1 -> agreeing ordered pairs 2*1 of 3*2 = 1/3.
    labels = [rank(1, 1, [0, 1]), rank(1, 2, [0, 1]), rank(1, 3, [1, 0])]
    assert item_agreement(labels, 2) == pytest.approx(1 / 3)
    assert item_agreement(labels[:2], 2) == 1.0
    assert item_agreement(labels[:1], 2) is None
    # K = 3, two labellers: rankings [0,1,2] and [0,2,1] agree on (0,1) and (0,2), not (1,2) -> 2/3.
    assert item_agreement([rank(1, 1, [0, 1, 2]), rank(1, 2, [0, 2, 1])], 3) == pytest.approx(2 / 3)


def test_krippendorff_alpha_by_hand():
    # Units [a,a], [a,b], [b,b]: o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6.
    # alpha = 1 - (n-1) * sum_{c!=k} o_ck / sum_{c!=k} n_c n_k = 1 - 5 * 2 / 18 = 4/9.
    assert krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"]]) == pytest.approx(4 / 9)
    # A unit of three values [a,a,b] weighs each ordered pair 1/(m-1) = 1/2: o_aa = 1, o_ab = o_ba = 1;
    # with [b,b] (o_bb = 2): n_a = 2, n_b = 3, n = 5; alpha = 1 - 4 * 2 / 12 = 1/3. A lone value is left out.
    assert krippendorff_alpha([["a", "a", "b"], ["b", "b"], ["a"]]) == pytest.approx(1 / 3)
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == 1.0
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None  # no variation: alpha undefined
    assert krippendorff_alpha([["a"]]) is None


def test_gold_score_counts_a_tie_as_half():
    assert gold_score(rank(1, 1, [0, 1]), [0, 1]) == 1.0
    assert gold_score(rank(1, 1, [1, 0]), [0, 1]) == 0.0
    assert gold_score(Label(1, 1, tie=True), [0, 1]) == 0.5
    # K = 3 against gold [0,1,2]: [1,0,2] is wrong on (0,1), right on (0,2) and (1,2) -> 2/3.
    assert gold_score(rank(1, 1, [1, 0, 2]), [0, 1, 2]) == pytest.approx(2 / 3)
    assert gold_score(Label(1, 1, skip=True), [0, 1]) is None


def test_labeller_quality_flags_low_gold_accuracy_and_inconsistency():
    people = [Labeller(1, "c", "good", "crowd"), Labeller(2, "c", "bad", "crowd"), Labeller(3, "c", "boss", "admin")]
    items = {i: item(i, gold=[0, 1]) for i in range(1, 4)}
    items[10] = item(10)
    items[11] = item(11, repeat_of=10)
    items[12] = item(12)
    items[13] = item(13, repeat_of=12)
    labels = [rank(i, 1, [0, 1]) for i in range(1, 4)] + [rank(i, 2, [1, 0]) for i in range(1, 4)]
    labels += [rank(10, 1, [0, 1]), rank(11, 1, [0, 1]), rank(12, 1, [1, 0]), rank(13, 1, [1, 0])]
    labels += [rank(10, 2, [0, 1]), rank(11, 2, [1, 0]), rank(12, 2, [1, 0]), rank(13, 2, [0, 1])]
    for label, seconds in zip(labels, range(len(labels))):
        label.seconds = float(seconds)
    report = {q.name: q for q in labeller_quality(people, items, labels, QualityThresholds())}
    assert set(report) == {"good", "bad"}  # admins do not label
    good, bad = report["good"], report["bad"]
    assert (good.gold_labels, good.gold_accuracy, good.repeats, good.self_consistency, good.flags) == (3, 1.0, 2, 1.0, [])
    assert (bad.gold_accuracy, bad.self_consistency) == (0.0, 0.0)
    assert len(bad.flags) == 2 and "gold accuracy 0.00" in bad.flags[0] and "self-consistency 0.00" in bad.flags[1]
    assert good.median_seconds == 6.0  # good's labels took 0, 1, 2, 6, 7, 8, 9 s
    assert bad.median_seconds == 10.0  # bad's took 3, 4, 5, 10, 11, 12, 13 s


def test_labeller_quality_needs_enough_gold_labels_before_flagging():
    people = [Labeller(1, "c", "new", "crowd")]
    items = {1: item(1, gold=[0, 1])}
    report = labeller_quality(people, items, [rank(1, 1, [1, 0])], QualityThresholds(min_gold_labels=3))
    assert report[0].gold_accuracy == 0.0 and report[0].flags == []


def test_dawid_skene_learns_to_ignore_random_labellers():
    """Two perfect labellers and three who are right half the time. On units 0-9 the three all vote
    wrong, so majority (3 to 2) is wrong there; Dawid-Skene learns the confusion matrices and follows
    the two reliable labellers everywhere."""
    truth = {u: (1 if u % 2 else -1) for u in range(40)}
    votes = {u: [(1, truth[u]), (2, truth[u])] for u in range(40)}
    for who, wrong_block in ((3, range(10, 20)), (4, range(20, 30)), (5, range(30, 40))):
        for u in range(40):
            wrong = u < 10 or u in wrong_block
            votes[u].append((who, -truth[u] if wrong else truth[u]))
    majority = {u: 1 if sum(v for _, v in vs) > 0 else -1 for u, vs in votes.items()}
    assert sum(majority[u] == truth[u] for u in truth) == 30
    posterior = dawid_skene(votes)
    assert all((posterior[u] > 0.5) == (truth[u] > 0) for u in truth)
    assert min(abs(p - 0.5) for p in posterior.values()) > 0.4  # confident, not coin flips


def test_aggregate_majority_experts_and_unresolved_items():
    roles = {1: "crowd", 2: "crowd", 3: "crowd", 9: "expert"}
    items = [item(1), item(2), item(3, k=3), item(4), item(5, repeat_of=1)]
    labels = [
        rank(1, 1, [1, 0]), rank(1, 2, [1, 0]), rank(1, 3, [0, 1]),  # 2 to 1 for response 1
        rank(2, 1, [0, 1]), rank(2, 2, [1, 0]),  # a tie of votes ...
        rank(2, 9, [1, 0]),  # ... the expert decides
        rank(3, 1, [2, 0, 1]), rank(3, 2, [2, 1, 0]), rank(3, 3, [0, 2, 1]),
        rank(4, 1, [0, 1]), Label(4, 2, tie=True), rank(4, 3, [1, 0]),  # +1, 0, -1: undecided
        rank(5, 1, [0, 1]),  # a repeat is not exported
    ]
    result = aggregate(items, labels, roles)
    by_item = {r.meta["item_id"]: r for r in result.records}
    assert sorted(by_item) == [1, 2, 3]
    assert by_item[1].ranking == [1, 0] and by_item[1].meta["labels"] == 3
    assert by_item[1].meta["agreement"] == pytest.approx(1 / 3)
    assert by_item[2].ranking == [1, 0] and by_item[2].meta["decided_by"] == "expert"
    # Item 3 pairs: (0,1) votes -1? labels say 0>1 for [2,0,1] (+1), [2,1,0] (-1), [0,2,1] (+1) -> 0 better;
    # (0,2): -1, -1, +1 -> 2 better; (1,2): -1, -1, -1 -> 2 better. Copeland: 2 wins 2, 0 wins 1, 1 wins 0.
    assert by_item[3].ranking == [2, 0, 1]
    assert (result.unresolved, result.by_expert) == (1, 1)


def test_aggregate_leaves_out_excluded_labellers_and_skips():
    roles = {1: "crowd", 2: "crowd", 3: "crowd"}
    labels = [rank(1, 1, [0, 1]), rank(1, 2, [1, 0]), rank(1, 3, [1, 0]), Label(1, 4, skip=True)]
    assert aggregate([item(1)], labels, roles).records[0].ranking == [1, 0]
    assert aggregate([item(1)], labels, roles, excluded={2, 3}).records[0].ranking == [0, 1]
    with pytest.raises(ValueError, match="aggregation"):
        aggregate([item(1)], labels, roles, method="mean")


def test_aggregate_by_dawid_skene_uses_the_posterior():
    roles = {i: "crowd" for i in range(1, 6)}
    truth = {u: [0, 1] if u % 2 else [1, 0] for u in range(1, 41)}
    labels = []
    for u, right in truth.items():
        wrong = right[::-1]
        labels += [rank(u, 1, right), rank(u, 2, right)]
        for who, block in ((3, range(11, 21)), (4, range(21, 31)), (5, range(31, 41))):
            labels.append(rank(u, who, wrong if u <= 10 or u in block else right))
    items = [item(u) for u in truth]
    by_majority = aggregate(items, labels, roles, method="majority").records
    by_ds = aggregate(items, labels, roles, method="dawid_skene").records
    assert sum(r.ranking == truth[r.meta["item_id"]] for r in by_majority) == 30
    assert sum(r.ranking == truth[r.meta["item_id"]] for r in by_ds) == 40


def test_routing_to_an_expert_waits_for_k_labels_then_checks_agreement():
    agree, disagree = [rank(1, 1, [0, 1]), rank(1, 2, [0, 1])], [rank(1, 1, [0, 1]), rank(1, 2, [1, 0])]
    assert not should_route_to_expert(disagree[:1], 2, redundancy=2, threshold=0.5)
    assert should_route_to_expert(disagree, 2, redundancy=2, threshold=0.5)
    assert not should_route_to_expert(agree, 2, redundancy=2, threshold=0.5)
    assert not should_route_to_expert(disagree + [Label(1, 3, skip=True)], 2, redundancy=3, threshold=0.5)


def test_units_keep_crowd_judgements_per_item_pair():
    items = {1: item(1, k=3)}
    labels = [rank(1, 1, [0, 1, 2]), rank(1, 2, [1, 0, 2]), rank(1, 9, [2, 1, 0])]
    got = sorted(units(items, labels, {1: "crowd", 2: "crowd", 9: "expert"}))
    assert got == sorted([[1, -1], [1, 1], [1, 1]])
