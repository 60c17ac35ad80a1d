"""Text figures a paper reports beside reward and KL: BLEU and ROUGE-L against reference answers
(the maintained implementations, sacrebleu and rouge-score), and distinct-n diversity."""

from __future__ import annotations


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of ``texts`` (words split on whitespace; Li et al. 2016);
    0 when there are none. 1.0: no n-gram repeats anywhere; low: the policy says the same things."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) of each hypothesis against its one reference, sacrebleu's default settings."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)


def rouge_l(hypotheses: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 of each hypothesis against its reference (rouge-score, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(reference, hypothesis)["rougeL"].fmeasure for hypothesis, reference in zip(hypotheses, references)]
