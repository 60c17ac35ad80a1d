"""Logit filtering for sampling: temperature, top-k and nucleus (top-p)."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest nucleus of mass >= top_p to -inf.

    ``top_k=0`` and ``top_p=1.0`` disable the respective filter. The most likely token always survives.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Mass strictly before each token: a token is kept while that mass is still below top_p.
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def gumbel_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard Gumbel noise of ``shape`` (float32): ``argmax(logits + noise)`` is a categorical draw
    from ``softmax(logits)`` (the Gumbel-max trick)."""
    uniform = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    # -log(U) ~ Exp(1); clamped so that U -> 1 cannot give log(0).
    return -torch.log((-torch.log(uniform)).clamp_min(1e-20))


def gumbel_max(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row drawn from ``softmax(logits)`` (B, V), as (B, 1): ``argmax(logits + Gumbel noise)``.

    Exactly a categorical draw, and on the CPU about ten times cheaper than ``torch.multinomial`` at a
    vocabulary of a few hundred, where the sampler's multinomial was an eighth of a GRPO step. Rows of
    -inf logits (filtered tokens) are never drawn.
    """
    return (logits.float() + gumbel_noise(logits.shape, generator, logits.device)).argmax(-1, keepdim=True)


def sample_next_token(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw one token per row from ``logits`` (B, V); ``temperature == 0`` means greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    return gumbel_max(filter_logits(logits.float() / temperature, top_k, top_p), generator).squeeze(-1)
