"""Token-level helpers: log-probs of chosen tokens, entropy, positions, last valid token, the shared-prompt mask."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token in ``tokens`` (B, T) under ``logits`` (B, T, V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    # p * log p is 0 where p is 0 (filtered logits are -inf): avoid 0 * -inf = nan.
    plogp = torch.where(torch.isneginf(logp), torch.zeros_like(logp), logp.exp() * logp)
    return -plogp.sum(-1)


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor, entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs (B, T) and entropy (B, T) from one log-softmax over ``logits`` (B, T, V).

    With ``entropy_grad=False`` the entropy is a diagnostic: it is computed without building a graph,
    so an entropy coefficient of 0 costs no memory in the backward pass.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        source = logp if entropy_grad else logp.detach()
        plogp = torch.where(torch.isneginf(source), torch.zeros_like(source), source.exp() * source)
        entropy = -plogp.sum(-1)
    return chosen, entropy


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: the first real token is position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask 1 in each row (left or right padding)."""
    length = attention_mask.shape[-1]
    return length - 1 - attention_mask.long().flip(-1).argmax(-1)


PROMPT_SEGMENT, PADDING_SEGMENT = 0, -1
"""Segment ids of the shared-prompt layout: the prompt, padding; responses are 1, 2, ..."""


def shared_prompt_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Attention mask (B, 1, L, L), True where query i may attend to key j, for rows that hold one
    prompt followed by several responses (``segment_ids`` (B, L): 0 prompt, k >= 1 the k-th response,
    -1 padding).

    Each response sees the prompt and its own earlier tokens, never another response, so its hidden
    states equal those of a row holding the prompt and that response alone (given position ids that
    restart each response after the prompt). Every query also sees itself: a padding row is never
    fully masked, which would give NaN in scaled-dot-product attention.
    """
    length = segment_ids.shape[-1]
    query, key = segment_ids.unsqueeze(-1), segment_ids.unsqueeze(-2)
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    visible = ((key == PROMPT_SEGMENT) | (key == query)) & (key != PADDING_SEGMENT) & causal
    return (visible | torch.eye(length, dtype=torch.bool, device=segment_ids.device)).unsqueeze(1)


def truncate_after_eos(tokens: torch.Tensor, eos_token_id: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first EOS (kept) and pad the rest.

    :returns: ``(tokens, mask, has_eos)``: padded tokens, (B, T) mask of kept tokens, (B,) bool.
    """
    is_eos = tokens == eos_token_id
    # eos positions strictly before t: cumulative count shifted right by one.
    seen_before = torch.cumsum(is_eos.long(), -1) - is_eos.long()
    mask = (seen_before == 0).long()
    return torch.where(mask.bool(), tokens, torch.full_like(tokens, pad_token_id)), mask, is_eos.any(-1)
