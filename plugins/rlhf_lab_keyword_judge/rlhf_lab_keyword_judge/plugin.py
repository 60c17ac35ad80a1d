"""``feedback=keyword_judge``: a rule-based stand-in for an AI judge.

The judge scores each candidate response by counting words::

    score = (occurrences of keywords) - (occurrences of penalty words)

Words are matched whole and lower-cased (``"Great!"`` counts as ``great``; ``"greatest"`` does not).
Feedback is then drawn from that score with Bradley-Terry noise of temperature ``noise``, as the
built-in simulated annotators do with a task's utility:

* a ranking of K responses is ``sort(score_k / noise + Gumbel noise)`` (Plackett-Luce), so that
  P(a ranked above b) = sigmoid((score_a - score_b) / noise);
* a rating is ``score + noise * Normal(0, 1)``.

The judge needs no gold utility from the task, so it works with any task. Draws come from
``random.Random(seed)``: the same seed and candidates give the same records.

This module is the plugin the entry point names; it imports only the plugin API (``rlhf_lab.api``), and no torch.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from rlhf_lab.api import PreferenceRecord, RlhfLabError, gaussian_ratings, hookimpl, plackett_luce_ranking

NAME = "keyword_judge"

WORD = re.compile(r"\w+(?:['-]\w+)*")
"""A word: letters/digits/underscore, optionally joined by ' or - (``don't``, ``well-known``)."""


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``, punctuation dropped."""
    return WORD.findall(text.lower())


def keyword_score(text: str, keywords, penalty_words=()) -> int:
    """Occurrences of ``keywords`` minus occurrences of ``penalty_words`` in ``text`` (whole words, any case)."""
    good = {w.lower() for w in keywords}
    bad = {w.lower() for w in penalty_words}
    return sum((w in good) - (w in bad) for w in words(text))


def _check_words(key: str, value) -> None:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"feedback.{key} must be a list of words, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not WORD.fullmatch(item.lower()):
            raise ValueError(f"feedback.{key}: {item!r} is not a single word (matching is word by word)")


@dataclass
class KeywordJudgeConfig:
    """Schema of ``feedback=keyword_judge``."""

    name: str = NAME
    """Registry name; must stay ``keyword_judge``."""
    keywords: list[str] = field(default_factory=lambda: ["great", "lovely", "wonderful"])
    """Words the judge likes: each occurrence in a response adds 1 to its score (case-insensitive)."""
    penalty_words: list[str] = field(default_factory=list)
    """Words the judge dislikes: each occurrence subtracts 1 from the score."""
    responses_per_prompt: int = 4
    """K: candidates sampled from the SFT policy per prompt (a ranking gives K-choose-2 pairs)."""
    rounds: int = 2
    """Times each training prompt is sent for judging (fresh candidates each time)."""
    noise: float = 0.5
    """Bradley-Terry temperature (> 0): P(a above b) = sigmoid((score_a - score_b) / noise); ratings get noise * N(0, 1)."""

    def __post_init__(self) -> None:
        _check_words("keywords", self.keywords)
        _check_words("penalty_words", self.penalty_words)
        if not self.keywords and not self.penalty_words:
            raise ValueError("feedback.keywords and feedback.penalty_words are both empty: every response would score 0")
        both = sorted({w.lower() for w in self.keywords} & {w.lower() for w in self.penalty_words})
        if both:
            raise ValueError(f"feedback.keywords and feedback.penalty_words share {both}")
        if isinstance(self.responses_per_prompt, bool) or self.responses_per_prompt < 2:
            raise ValueError(f"feedback.responses_per_prompt must be >= 2, got {self.responses_per_prompt}")
        if isinstance(self.rounds, bool) or self.rounds < 1:
            raise ValueError(f"feedback.rounds must be >= 1, got {self.rounds}")
        if not (isinstance(self.noise, (int, float)) and math.isfinite(self.noise) and self.noise > 0):
            raise ValueError(f"feedback.noise must be a finite number > 0, got {self.noise}")


class KeywordJudge:
    """Ranks or rates candidate responses by keyword counts, with Bradley-Terry noise."""

    needs_candidates = True

    def __init__(self, cfg: KeywordJudgeConfig, task=None) -> None:
        # The task is not needed: the judge reads only the responses (no gold utility required).
        self.cfg = cfg
        self.responses_per_prompt, self.rounds = cfg.responses_per_prompt, cfg.rounds

    def score(self, response: str) -> int:
        """The noiseless judge score of one response."""
        return keyword_score(response, self.cfg.keywords, self.cfg.penalty_words)

    def collect(self, prompts: list[str], candidates: list[list[str]], kind: str, seed: int, split: str = "train") -> list[PreferenceRecord]:
        """One record per prompt: a ``ranking`` (best first) or ``scores``, as ``kind`` asks."""
        if kind not in ("ranking", "rating"):
            raise RlhfLabError(f"feedback={NAME} cannot produce '{kind}' feedback (only 'ranking' or 'rating')")
        if len(prompts) != len(candidates):
            raise RlhfLabError(f"feedback={NAME}: {len(prompts)} prompts but {len(candidates)} candidate lists")
        rng = random.Random(seed)
        noise = self.cfg.noise
        records = []
        for prompt, responses in zip(prompts, candidates):
            scores = [self.score(r) for r in responses]
            record = PreferenceRecord(prompt=prompt, responses=list(responses), annotator=NAME, meta={"keyword_scores": scores, "noise": noise})
            if kind == "ranking":
                record.ranking = plackett_luce_ranking(scores, noise, rng)
            else:
                record.scores = gaussian_ratings(scores, noise, rng)
            records.append(record)
        return records


@hookimpl
def rlhf_lab_register_feedback_sources(register):
    register(NAME, KeywordJudge, KeywordJudgeConfig)
