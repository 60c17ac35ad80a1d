"""How an AI judge is reached: a local causal LM (:class:`LocalJudge`), or a plugin's client from
'package.module:factory' (:func:`load_client`) whose every answer is checked (:class:`CheckedClient`).
Both offer ``label_probabilities(texts, labels)`` and ``generate(texts, max_new_tokens)``; errors name the
config key that chose the judge (``feedback.model``, ``feedback.client``, ``eval.judge``)."""

from __future__ import annotations

import importlib
import math
import re

from rlhf_lab.errors import RlhfLabError

CLIENT_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
"""'package.module:factory', a plugin's judge client (as opposed to a model directory or hub name)."""


class LocalJudge:
    """A local causal LM as judge: label probabilities at the end of a prompt, and greedy generation."""

    def __init__(self, name_or_path: str, dtype: str = "float32", batch_size: int = 16, device=None, key: str = "feedback.model") -> None:
        from rlhf_lab.models.loading import load_policy, load_tokenizer, resolve_model_path

        path = resolve_model_path(name_or_path, key)
        self.key = key
        self.tokenizer = load_tokenizer(path, key=key)
        self.model = load_policy(path, dtype, key=key).eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.batch_size = batch_size
        self.positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)

    def _encode(self, texts: list[str], room: int) -> list[list[int]]:
        from rlhf_lab.data import encode_prompt

        encoded = [encode_prompt(self.tokenizer, t) for t in texts]
        if self.positions is not None:
            longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
            if len(encoded[longest]) + room > self.positions:
                raise RlhfLabError(
                    f"{self.key}: a judge prompt is {len(encoded[longest])} tokens (+{room} to generate), over the judge model's "
                    f"{self.positions} positions. Shorten feedback.template or the principles, or use a larger judge. "
                    f"The prompt begins: {texts[longest][:120]!r}"
                )
        return encoded

    def label_sequences(self, labels: list[str]) -> list[list[int]]:
        """The token ids of each label; they must be non-empty and differ."""
        ids = [self.tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
        if any(not i for i in ids) or len({tuple(i) for i in ids}) != len(ids):
            raise RlhfLabError(f"feedback.labels {labels}: their tokens under the judge's tokenizer must exist and differ, got {ids}")
        return ids

    def label_probabilities(self, texts: list[str], labels: list[str]) -> list[list[float]]:
        """For each text, the probabilities of continuing it with each label, renormalised over the labels.

        Labels of one token each need one forward per text (the next-token distribution); longer labels
        (" A" is two tokens for some tokenizers) are scored whole, one forward per (text, label).
        """
        import torch

        from rlhf_lab.data import pad_left
        from rlhf_lab.ops.sequence import position_ids_from_mask

        sequences = self.label_sequences(labels)
        longest = max(len(s) for s in sequences)
        encoded = self._encode(texts, room=longest)
        device = next(self.model.parameters()).device
        single = longest == 1
        out: list[list[float]] = []
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                chunk = encoded[start : start + self.batch_size]
                rows = chunk if single else [ids + label for ids in chunk for label in sequences]
                ids, mask = pad_left(rows, self.tokenizer.pad_token_id)
                ids, mask = ids.to(device), mask.to(device)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits.float()
                if single:
                    scores = logits[:, -1, [s[0] for s in sequences]]
                else:
                    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
                    lengths = [len(s) for s in sequences] * len(chunk)
                    scores = torch.stack([row[-n:].sum() for row, n in zip(logprobs, lengths)]).view(len(chunk), len(sequences))
                out.extend(torch.softmax(scores, dim=-1).tolist())
        return out

    def generate(self, texts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of each text, up to EOS or ``max_new_tokens``."""
        from rlhf_lab.config import SamplingConfig
        from rlhf_lab.data import decode_response
        from rlhf_lab.rollout import sample_responses

        self._encode(texts, room=max_new_tokens)
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens, batch_size=self.batch_size)
        grouped = sample_responses(self.model, self.tokenizer, texts, sampling, samples_per_prompt=1, seed=0)
        return [decode_response(self.tokenizer, group[0]) for group in grouped]


def load_client(spec: str, cfg, key: str = "feedback.client"):
    """A plugin's judge client from 'package.module:factory', tried once on a tiny input (a client
    that raises or answers in the wrong shape is named before any work), its answers checked on every
    call after (:class:`CheckedClient`). Errors name the config ``key`` that gave ``spec``."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise RlhfLabError(f"{key} '{spec}': cannot import it ({error}); give 'package.module:factory'") from None
    try:
        client = factory(cfg)
    except Exception as error:
        raise RlhfLabError(f"{key} '{spec}': its factory raised {type(error).__name__}: {error}") from error
    for method in ("label_probabilities", "generate"):
        if not callable(getattr(client, method, None)):
            raise RlhfLabError(f"{key} '{spec}': the client has no {method}() method")
    checked = CheckedClient(client, spec, key)
    if cfg is not None:  # the run's own templates, filled with a tiny example
        example = dict(prompt="What is two plus two?", response="Four.", principle="Be accurate.")
        checked.label_probabilities([cfg.template.format(principles="- Be accurate.", prompt=example["prompt"], response_a="Four.",
                                                         response_b="Five.")], list(cfg.labels))
        checked.generate([cfg.critique_template.format(**example)], 4)
    return checked


class CheckedClient:
    """A plugin's judge client whose answers are checked: one probability per label for every text
    (finite, in [0, 1]), one string per prompt. A wrong answer, or an exception, names the client, the
    input and what came back."""

    def __init__(self, client, spec: str, key: str = "feedback.client") -> None:
        self.client, self.spec, self.key = client, spec, key

    def _call(self, method: str, texts: list[str], *args):
        try:
            return getattr(self.client, method)(texts, *args)
        except Exception as error:
            raise RlhfLabError(f"{self.key} '{self.spec}': {method}() raised {type(error).__name__}: {error} "
                               f"(first input {texts[0][:80]!r} of {len(texts)})") from error

    def label_probabilities(self, texts: list[str], labels: list[str]) -> list[list[float]]:
        out = self._call("label_probabilities", texts, labels)
        rows = list(out) if isinstance(out, (list, tuple)) else None
        good = rows is not None and len(rows) == len(texts) and all(
            isinstance(row, (list, tuple)) and len(row) == len(labels)
            and all(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and 0 <= p <= 1 for p in row)
            for row in rows
        )
        if not good:
            raise RlhfLabError(f"{self.key} '{self.spec}': label_probabilities() returned {str(out)[:200]} for {len(texts)} text(s) "
                               f"(first {texts[0][:80]!r}); it returns, per text, one probability in [0, 1] for each of the labels {labels}")
        return [[float(p) for p in row] for row in rows]

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        out = self._call("generate", prompts, max_new_tokens)
        if not (isinstance(out, (list, tuple)) and len(out) == len(prompts) and all(isinstance(t, str) for t in out)):
            raise RlhfLabError(f"{self.key} '{self.spec}': generate() returned {str(out)[:200]} for {len(prompts)} prompt(s) "
                               f"(first {prompts[0][:80]!r}); it returns one string per prompt")
        return list(out)
