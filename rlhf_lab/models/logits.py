"""Logits only where a loss reads them.

A causal LM projects every position onto the vocabulary, and a training loss then reads a few of
those rows: an SFT loss the response tokens, not the prompt nor the padding. At real lengths the
projection, its log-softmax and their backward over the unread rows cost more than the whole
transformer of a small model (an HH-like batch of 64 dialogues: 37% padding, responses a fifth of
the real tokens). :func:`logits_at` runs the model with the hidden states of the wanted positions
alone reaching its output layer.
"""

from __future__ import annotations

import torch


def logits_at(model, inputs: dict, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) at positions ``(rows[i], cols[i])`` of ``model(**inputs)``.

    The output layer (``get_output_embeddings()``) gets the selected hidden states only, through a
    forward pre-hook; whatever the model does after it (a logit scale or soft-cap) is element-wise and
    so applies unchanged. A model without a reachable output layer computes every position's logits
    and this picks the rows, the same numbers at the usual cost.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return model(**inputs).logits[rows, cols]

    def select(module, args):
        hidden = args[0]
        return (hidden[rows, cols],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        logits = model(**inputs).logits
    finally:
        handle.remove()
    if logits.dim() != 2 or logits.shape[0] != rows.shape[0]:
        raise RuntimeError(f"{type(model).__name__} reshapes its output layer's result ({tuple(logits.shape)}); "
                           "logits_at needs one row per selected position")
    return logits
