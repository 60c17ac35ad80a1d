"""Batched sampling with a KV cache: the rollout engine shared by on-policy algorithms and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab.ops.sampling import sample_next_token
from rlhf_lab.ops.sequence import position_ids_from_mask, truncate_after_eos


@dataclass
class Generation:
    """Sampled responses for a batch of left-padded prompts."""

    response_ids: torch.Tensor
    """(B, R) tokens, padded after the first EOS (which is kept)."""
    response_mask: torch.Tensor
    """(B, R) 1 for kept tokens."""
    has_eos: torch.Tensor
    """(B,) whether the response ended with EOS within ``max_new_tokens``."""


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Generation:
    """Sample up to ``max_new_tokens`` per prompt, reusing the KV cache; stops once every row has EOS."""
    attention_mask = prompt_mask.clone()
    position_ids = position_ids_from_mask(attention_mask)
    input_ids, past = prompt_ids, None
    finished = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    tokens = []
    for _ in range(max_new_tokens):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        next_token = sample_next_token(out.logits[:, -1, :], temperature, top_k, top_p, generator)
        next_token = torch.where(finished, torch.full_like(next_token, pad_token_id), next_token)
        tokens.append(next_token)
        finished |= next_token == eos_token_id
        if bool(finished.all()):
            break
        input_ids = next_token.unsqueeze(1)
        position_ids = position_ids[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, torch.ones_like(input_ids)], dim=1)
    response, mask, has_eos = truncate_after_eos(torch.stack(tokens, dim=1), eos_token_id, pad_token_id)
    return Generation(response_ids=response, response_mask=mask, has_eos=has_eos)


def sample_responses(
    model, tokenizer, prompts: list[str], sampling, *, samples_per_prompt: int = 1, seed: int = 0
) -> list[list[list[int]]]:
    """Token ids of ``samples_per_prompt`` responses (EOS included when produced) for each prompt."""
    from rlhf_lab.data import encode_prompt, pad_left

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    flat = [p for p in prompts for _ in range(samples_per_prompt)]
    out: list[list[int]] = []
    for start in range(0, len(flat), sampling.batch_size):
        ids, mask = pad_left([encode_prompt(tokenizer, p) for p in flat[start : start + sampling.batch_size]], tokenizer.pad_token_id)
        gen = generate(
            model, ids.to(device), mask.to(device),
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p, generator=generator,
        )
        for row, row_mask in zip(gen.response_ids.tolist(), gen.response_mask.tolist()):
            out.append([t for t, m in zip(row, row_mask) if m])
    model.train(was_training)
    return [out[i * samples_per_prompt : (i + 1) * samples_per_prompt] for i in range(len(prompts))]
