"""Distinct-n, BLEU and ROUGE-L against hand-computed values."""

from __future__ import annotations

import pytest

from rlhf_lab.text_metrics import corpus_bleu, distinct_n, rouge_l


def test_distinct_n_by_hand():
    texts = ["a b a", "a b"]
    assert distinct_n(texts, 1) == pytest.approx(2 / 5)  # a b a a b: {a, b}
    assert distinct_n(texts, 2) == pytest.approx(2 / 3)  # (a b) (b a) (a b)
    assert distinct_n(["a"], 2) == 0.0
    assert distinct_n(["a b", "a b"], 1) == pytest.approx(2 / 4)  # a policy repeating itself scores low


def test_rouge_l_by_hand():
    # tokens the cat is great / the cat is lovely: LCS 3, precision = recall = 3/4
    assert rouge_l(["the cat is lovely ."], ["the cat is great ."]) == [pytest.approx(0.75)]
    # LCS "a c" of 2: precision 2/2, recall 2/4, F1 = 2 * 1 * 0.5 / 1.5
    assert rouge_l(["a c"], ["a b c d"]) == [pytest.approx(2 / 3)]


def test_bleu_is_100_for_the_reference_and_0_with_no_shared_4gram():
    assert corpus_bleu(["the cat is very lovely today ."], ["the cat is very lovely today ."]) == pytest.approx(100.0)
    assert corpus_bleu(["a b c d"], ["w x y z"]) == pytest.approx(0.0)
