"""Tokenising prompts and responses into padded batches.

Every batch uses one layout: prompts left-padded to a common length P, responses right-padded after
them, so the response of every row starts at column P and the logits at columns P-1 .. L-2 predict it.
Position ids skip the left padding.
"""

from __future__ import annotations

import torch

from rlhf_lab.ops.sequence import position_ids_from_mask

RESPONSE_SEPARATOR = " "
"""Text placed between a prompt and its response."""


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


def encode_response(tokenizer, response: str) -> list[int]:
    """Response tokens followed by EOS."""
    return tokenizer(RESPONSE_SEPARATOR + response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_responses(tokenizer, responses: list[str]) -> list[list[int]]:
    """:func:`encode_response` of many responses in one batched tokenizer call."""
    if not responses:
        return []
    encoded = tokenizer([RESPONSE_SEPARATOR + r for r in responses], add_special_tokens=False)["input_ids"]
    return [ids + [tokenizer.eos_token_id] for ids in encoded]


def record_response_ids(tokenizer, record) -> list[list[int]]:
    """Token ids of each response of a preference record: the ids it carries, else its text encoded."""
    if record.response_ids is not None:
        return record.response_ids
    return [encode_response(tokenizer, r) for r in record.responses]


def decode_response(tokenizer, response_ids: list[int]) -> str:
    return tokenizer.decode(response_ids, skip_special_tokens=True).strip()


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with every sequence right-aligned."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
    return ids, mask


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with every sequence left-aligned."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
    return ids, mask


def join(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor) -> dict:
    """Concatenate padded prompts and responses into one batch dict (see the module docstring)."""
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return {
        "input_ids": torch.cat([prompt_ids, response_ids], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "prompt_len": prompt_ids.shape[1],
    }


def collate_pairs(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict:
    """Batch of (prompt, response) token lists in the shared layout."""
    return join(*pad_left(prompts, pad_id), *pad_right(responses, pad_id))


def collate_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict:
    """Each prompt and its response as one right-padded sequence (no ``prompt_len``): for a model that
    scores whole sequences at their last token, this layout pads to the longest prompt + response
    instead of the longest prompt plus the longest response."""
    ids, mask = pad_right([p + r for p, r in zip(prompts, responses)], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask)}


def collate_demonstrations(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict:
    """Each prompt and its response as one right-padded sequence, with the positions whose logits
    predict a response token: ``target_rows``/``target_cols`` (the position before each response
    token) and ``targets`` (that token), response by response in batch order.

    A batch then costs the longest prompt + response, not the longest prompt plus the longest
    response (:func:`collate_pairs`), and a loss that reads only the targets' logits
    (:func:`~rlhf_lab.models.logits.logits_at`) projects no prompt or padding position.
    """
    ids, mask = pad_right([p + r for p, r in zip(prompts, responses)], pad_id)
    rows, cols, targets = [], [], []
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        # Without a prompt, nothing predicts the response's first token: it is context only.
        first = 0 if prompt else 1
        rows += [row] * (len(response) - first)
        cols += range(len(prompt) - 1 + first, len(prompt) + len(response) - 1)
        targets += response[first:]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids_from_mask(mask),
            "target_rows": torch.tensor(rows, dtype=torch.long), "target_cols": torch.tensor(cols, dtype=torch.long),
            "targets": torch.tensor(targets, dtype=torch.long)}


def collate_prompt_groups(groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> dict:
    """One right-padded row per (prompt, responses) group: the prompt once, then each response.

    For a model that scores whole sequences at their last token (a reward model), K responses to one
    prompt then cost P + sum(R_k) positions instead of K * (P + max R). ``segment_ids`` (0 prompt,
    k the k-th response, -1 padding) give :func:`~rlhf_lab.ops.sequence.shared_prompt_mask`; position
    ids restart every response after the prompt. ``score_rows``/``score_cols`` index each response's
    last token, responses in group order (the order of :func:`collate_sequences` over the same
    groups). Every sequence is one group's worth; nothing is truncated.
    """
    from rlhf_lab.ops.sequence import PADDING_SEGMENT, PROMPT_SEGMENT

    width = max(1, max(len(p) + sum(len(r) for r in rs) for p, rs in groups))
    # Rows built as lists and turned into tensors once: per-element tensor writes would cost more
    # than the model's forward on a small batch.
    ids, segments, positions, rows, cols = [], [], [], [], []
    for row, (prompt, responses) in enumerate(groups):
        row_ids, row_segments, row_positions = list(prompt), [PROMPT_SEGMENT] * len(prompt), list(range(len(prompt)))
        for k, response in enumerate(responses, start=1):
            row_ids += response
            row_segments += [k] * len(response)
            row_positions += range(len(prompt), len(prompt) + len(response))
            rows.append(row)
            cols.append(len(row_ids) - 1 if response else len(prompt) - 1)  # an empty response: where the prompt ends
        pad = width - len(row_ids)
        ids.append(row_ids + [pad_id] * pad)
        segments.append(row_segments + [PADDING_SEGMENT] * pad)
        positions.append(row_positions + [0] * pad)
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "segment_ids": torch.tensor(segments, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "score_rows": torch.tensor(rows, dtype=torch.long), "score_cols": torch.tensor(cols, dtype=torch.long)}


def batched_pairs(tokenizer, prompts: list[str], responses: list[list[int]], batch_size: int, device):
    """Batches (on ``device``) of prompt texts with response token ids, in the shared layout, in order."""
    for start in range(0, len(prompts), batch_size):
        batch = collate_pairs(
            [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]],
            responses[start : start + batch_size],
            tokenizer.pad_token_id,
        )
        yield {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def accepts_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (most Hugging Face causal LMs do)."""
    import inspect

    # A peft wrapper passes the argument through to the model it wraps: ask that model.
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    cls = type(model)
    cached = _LOGITS_TO_KEEP.get(cls)
    if cached is None:
        cached = _LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return cached


_LOGITS_TO_KEEP: dict[type, bool] = {}


def response_logits(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """Logits (B, R, V) that predict each response token, divided by ``temperature``.

    Where the model supports ``logits_to_keep`` only the R positions that predict the response go
    through the vocabulary projection: the prompt's logits are never used.
    """
    p = batch["prompt_len"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"]}
    response_len = batch["input_ids"].shape[1] - p
    if accepts_logits_to_keep(model):
        logits = model(**inputs, logits_to_keep=response_len + 1).logits[:, :-1]
    else:
        logits = model(**inputs).logits[:, p - 1 : -1]
    # Scaled in float32, as the sampler does: in bf16 the two would disagree by up to 0.1 nats.
    return logits.float() / temperature if temperature not in (0, 1) else logits


def response_logprobs(model, batch: dict, response_mask: torch.Tensor, temperature: float = 1.0,
                      entropy_grad: bool | None = None):
    """Log-probs (B, R) of a shared-layout batch's response tokens, 0 where ``response_mask`` is 0,
    with only the unmasked positions projected onto the vocabulary
    (:func:`~rlhf_lab.models.logits.logits_at`): after a rollout, the columns past each response's EOS
    are most of a batch's response positions.

    With ``entropy_grad`` (True or False) also each position's entropy (B, R), with or without its
    graph (:func:`~rlhf_lab.ops.sequence.logprobs_and_entropy`). Log-probs are those of the
    temperature-scaled distribution, scaled in float32 as :func:`response_logits` does.
    """
    from rlhf_lab.models.logits import logits_at
    from rlhf_lab.ops.sequence import logprobs_and_entropy, token_logprobs

    p = batch["prompt_len"]
    rows, cols = response_mask.nonzero(as_tuple=True)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "position_ids": batch["position_ids"]}
    logits = logits_at(model, inputs, rows, cols + p - 1)
    if temperature not in (0, 1):
        logits = logits.float() / temperature
    tokens = batch["input_ids"][rows, cols + p]

    def placed(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(response_mask.shape, dtype=values.dtype, device=values.device).index_put((rows, cols), values)

    if entropy_grad is None:
        return placed(token_logprobs(logits[None], tokens[None])[0])
    logp, entropy = logprobs_and_entropy(logits[None], tokens[None], entropy_grad)
    return placed(logp[0]), placed(entropy[0])
