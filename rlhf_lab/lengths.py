"""Length limits, checked before any training.

A model has a fixed number of positions. Every prompt must leave room for the longest response the
run samples (``max_new_tokens``), and every demonstration and preference record must fit whole. The
pre-flight pass (:func:`preflight`) goes over the task's prompts and demonstrations and the preference
records a dataset gives, and either stops at the longest offender, naming where it is and the setting
to change, or (``data.truncate=true``) cuts: prompts from the left, so the end of a dialogue (the turn
being answered) is kept; responses from the right, so they lose their end (and their EOS). Every cut
and every dropped item is counted (``data/...`` metrics) and logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from rlhf_lab.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class LengthLimits:
    """The token budget of one run.

    :param positions: the model's positions (``max_position_embeddings`` / ``n_positions``).
    :param max_new_tokens: the longest response any sampling in the run may produce.
    :param max_prompt_tokens: a tighter prompt limit set by the user (None: what the positions leave).
    :param max_response_tokens: a limit on demonstration and preference responses (None: what the positions leave).
    """

    positions: int
    max_new_tokens: int
    max_prompt_tokens: Optional[int] = None
    max_response_tokens: Optional[int] = None

    @property
    def prompt_limit(self) -> int:
        room = self.positions - self.max_new_tokens
        return min(room, self.max_prompt_tokens) if self.max_prompt_tokens else room

    def response_limit(self, prompt_tokens: int) -> int:
        room = self.positions - prompt_tokens
        return min(room, self.max_response_tokens) if self.max_response_tokens else room

    def prompt_setting(self) -> str:
        if self.max_prompt_tokens and self.max_prompt_tokens < self.positions - self.max_new_tokens:
            return f"data.max_prompt_tokens={self.max_prompt_tokens}"
        return f"the model's {self.positions} positions less max_new_tokens={self.max_new_tokens}"


@dataclass
class Offender:
    """The longest item over its limit: where it is, what it is, its length and its limit."""

    where: str
    what: str
    tokens: int
    limit: int
    setting: str

    @property
    def excess(self) -> int:
        return self.tokens - self.limit


class LengthCheck:
    """Checks (or, with ``truncate``, cuts) items one by one; remembers the worst offender and counts cuts."""

    def __init__(self, tokenizer, limits: LengthLimits, truncate: bool) -> None:
        self.tokenizer, self.limits, self.truncate = tokenizer, limits, truncate
        self.counts: Counter = Counter()
        self.worst: Optional[Offender] = None
        self._prompt_cache: dict[str, tuple[str, int]] = {}
        self._prompt_tokens: dict[str, int] = {}
        self.longest: Counter = Counter()
        """Longest token counts after fitting: ``prompt``, and per kind of response (``demonstration``,
        ``preference response``) the response alone and with its prompt (``... sequence``); the memory
        estimate sizes its batches by them."""

    def note(self, key: str, tokens: int) -> None:
        """Remember ``tokens`` under ``key`` if it is the longest yet."""
        self.longest[key] = max(self.longest[key], tokens)

    def encode_prompts(self, prompts: list[str]) -> None:
        """Tokenise many prompts in one batched call (the fast tokenizer parallelises it)."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._prompt_tokens))
        if todo:
            for prompt, ids in zip(todo, self.tokenizer(todo, add_special_tokens=False)["input_ids"]):
                self._prompt_tokens[prompt] = len(ids)

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` (counted once per text)."""
        return self._tokens(prompt)

    def _tokens(self, prompt: str) -> int:
        if prompt not in self._prompt_tokens:
            from rlhf_lab.data import encode_prompt

            self._prompt_tokens[prompt] = len(encode_prompt(self.tokenizer, prompt))
        return self._prompt_tokens[prompt]

    def _offend(self, offender: Offender) -> None:
        if self.worst is None or offender.excess > self.worst.excess:
            self.worst = offender

    def prompt(self, prompt: str, where: str) -> Optional[str]:
        """The prompt, cut from the left to fit (``truncate``), or None when nothing of it can fit."""
        if prompt in self._prompt_cache:
            return self._prompt_cache[prompt][0]
        limit = self.limits.prompt_limit
        fitted, length = prompt, self._tokens(prompt)
        if length > limit:
            from rlhf_lab.data import encode_prompt

            ids = encode_prompt(self.tokenizer, prompt)
            if not self.truncate:
                self._offend(Offender(where, "prompt", len(ids), limit, self.limits.prompt_setting()))
            elif limit < 1:
                fitted = None
                self.counts["data/prompts_dropped"] += 1
            else:
                fitted = self.tokenizer.decode(ids[-limit:])
                self.counts["data/prompts_truncated"] += 1
        self._prompt_cache[prompt] = (fitted, length)
        if fitted is not None:
            self.note("prompt", min(length, limit))
        return fitted

    def response_ids(self, prompt: str, response_ids: list[int], where: str, what: str) -> list[int]:
        """The response's ids, cut from the right to fit after its (fitted) prompt."""
        prompt_tokens = self._tokens(prompt)
        limit = self.limits.response_limit(prompt_tokens)
        kept = len(response_ids) if len(response_ids) <= limit or not self.truncate else max(limit, 1)
        self.note(what, kept)
        self.note(f"{what} sequence", prompt_tokens + kept)
        if len(response_ids) <= limit:
            return response_ids
        if not self.truncate:
            positions = self.limits.positions
            if prompt_tokens >= positions:  # no room for any response: the prompt is what is too long
                self._offend(Offender(where, f"prompt (of a {what})", prompt_tokens, positions - 1,
                                      f"the model's {positions} positions, less one for the response"))
                return response_ids
            setting = (f"data.max_response_tokens={self.limits.max_response_tokens}" if self.limits.max_response_tokens
                       and self.limits.max_response_tokens < positions - prompt_tokens
                       else f"the model's {positions} positions less its {prompt_tokens}-token prompt")
            self._offend(Offender(where, what, len(response_ids), limit, setting))
            return response_ids
        self.counts["data/responses_truncated"] += 1
        return response_ids[: max(limit, 1)]

    def raise_if_over(self) -> None:
        """Stop with the longest offender, and the settings that would make it fit."""
        if self.worst is None:
            return
        w = self.worst
        raise DataError(
            f"{w.where}: {w.what} of {w.tokens} tokens is over its limit of {w.limit} ({w.setting}), the longest "
            "such item. Set data.truncate=true to cut prompts from the left and responses from the right "
            "(counted in the data/ metrics), or raise the limit: a model with more positions, a smaller "
            "max_new_tokens, or data.max_prompt_tokens / data.max_response_tokens."
        )

    def log_counts(self) -> dict:
        if self.counts:
            log.warning("lengths: %s", ", ".join(f"{k.split('/', 1)[1]} {v}" for k, v in sorted(self.counts.items())))
        return dict(self.counts)


def model_positions(config) -> Optional[int]:
    """The number of positions a Hugging Face model config allows (None: unbounded, e.g. rotary without a limit)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def cut_records(tokenizer, limits, records: list) -> list:
    """Preference records cut to ``limits`` in place (``data.truncate``; the pre-flight counted the cuts):
    prompts from the left, response ids to their limit; a record whose prompt cannot be kept is dropped."""
    from rlhf_lab.data import record_response_ids

    check, kept = LengthCheck(tokenizer, limits, truncate=True), []
    for record in records:
        prompt = check.prompt(record.prompt, "")
        if prompt is not None:
            record.response_ids = [check.response_ids(prompt, ids, "", "") for ids in record_response_ids(tokenizer, record)]
            record.prompt = prompt
            kept.append(record)
    return kept
