"""Built-in rule rewards for ``reward=rule``: plain functions ``f(prompt, response, **kwargs) -> float``."""

from __future__ import annotations

import re


def word_count(prompt: str, response: str, target: int | None = None) -> float:
    """Number of words; with ``target``, minus the distance to it (peaks at ``target`` words)."""
    words = len(response.split())
    return float(words if target is None else -abs(words - target))


def keyword_count(prompt: str, response: str, words: tuple[str, ...] | list[str] = ()) -> float:
    """How many of the response's words are in ``words``."""
    wanted = set(words)
    return float(sum(w in wanted for w in response.split()))


def regex_match(prompt: str, response: str, pattern: str = "") -> float:
    """1.0 if the whole response matches ``pattern`` (a format reward), else 0.0."""
    return 1.0 if re.fullmatch(pattern, response) else 0.0


def exact_answer(prompt: str, response: str, answers: dict[str, str] | None = None) -> float:
    """1.0 if the response equals the expected answer for this prompt (whitespace-normalised), else 0.0."""
    expected = (answers or {}).get(prompt)
    return 1.0 if expected is not None and " ".join(response.split()) == " ".join(expected.split()) else 0.0
