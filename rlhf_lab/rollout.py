"""The rollout engine shared by every on-policy algorithm and by evaluation.

``generate`` samples with a KV cache and returns the log-probability of every sampled token, taken
from the logits the sampler already computed, so an algorithm needs no second forward pass of the
policy for its "old" log-probs (a test checks they agree with a full forward). ``collect_experience``
turns a batch of prompts into one :class:`Experience`: responses, the behaviour policy's and the
reference's log-probs, the reward function's scores, the critic's values when there is a critic, and
group ids when each prompt is sampled k times. Algorithms differ only in what they make of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from rlhf_lab.data import accepts_logits_to_keep, join, response_logprobs
from rlhf_lab.ops.sampling import filter_logits, gumbel_noise
from rlhf_lab.ops.sequence import position_ids_from_mask, truncate_after_eos
from rlhf_lab.rewards.function import scored

FINISHED_CHECK_EVERY = 4
"""Tokens between checks that every row has ended: each check is a host sync, an extra step is not."""


@dataclass
class Generation:
    """Sampled responses for a batch of left-padded prompts."""

    response_ids: torch.Tensor
    """(B, R) tokens, padded after the first EOS (which is kept)."""
    response_mask: torch.Tensor
    """(B, R) 1 for kept tokens."""
    has_eos: torch.Tensor
    """(B,) whether the response ended with EOS within ``max_new_tokens``."""
    logprobs: torch.Tensor
    """(B, R) log-probability of each sampled token under the distribution it was drawn from
    (temperature applied; top-k/top-p filtering too, when set); 0 on padding."""


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
    lockstep: bool = False,
    samples_per_prompt: int = 1,
    drop_finished: bool = True,
) -> Generation:
    """Sample up to ``max_new_tokens`` for each of ``samples_per_prompt`` copies of every prompt (rows
    ``i * k .. i * k + k - 1`` answer prompt ``i``), reusing the KV cache.

    Work goes to real tokens only: each prompt is prefilled once and its cache copied for its k
    samples, and rows that have ended are dropped from the batch (and its cache) as they end, checked
    every ``FINISHED_CHECK_EVERY`` tokens. A row's draws come from the same random numbers whichever
    other rows are still running (the noise is drawn for the whole batch every step), so the samples
    are those of a lockstep loop over the repeated prompts on the same seed. ``lockstep``: a sharded
    model gathers its weights with the other ranks in every forward, so every rank takes every step
    and no row is dropped. ``drop_finished=false`` keeps ended rows in the batch until all have ended
    (the engine before it dropped rows; benchmarks/real_lengths.py compares the two).
    """
    k = samples_per_prompt
    rows = prompt_ids.shape[0] * k
    # One mask for the longest possible sequence; each step reads a prefix of it (a view, no copy).
    full_mask = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], max_new_tokens)], dim=1)
    position_ids = position_ids_from_mask(prompt_mask)
    call = _ForwardCall(model)
    logits, past = call(prompt_ids, full_mask[:, : prompt_ids.shape[1]], position_ids, None)
    if k > 1:
        logits, full_mask, position_ids = (t.repeat_interleave(k, dim=0) for t in (logits, full_mask, position_ids))
        past.batch_repeat_interleave(k)
    tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=prompt_ids.device)
    logprobs = torch.zeros((rows, max_new_tokens), device=prompt_ids.device)
    active = torch.arange(rows, device=prompt_ids.device)  # the batch rows still in the cache, in order
    finished = torch.zeros(rows, dtype=torch.bool, device=prompt_ids.device)
    prompt_len, steps = prompt_ids.shape[1], 0
    for step in range(max_new_tokens):
        next_token, next_logp = _sample(logits, temperature, top_k, top_p, generator, active, rows)
        next_token = torch.where(finished[active], torch.full_like(next_token, pad_token_id), next_token)
        tokens[active, step], logprobs[active, step] = next_token, next_logp
        finished[active] |= next_token == eos_token_id
        steps = step + 1
        if steps == max_new_tokens:
            break
        if not lockstep and steps % FINISHED_CHECK_EVERY == 0:
            running = (~finished[active]).nonzero().squeeze(1)
            if running.numel() == 0:
                break
            if drop_finished and running.numel() < active.numel():  # one host sync decided both
                active, next_token = active[running], next_token[running]
                full_mask, position_ids = full_mask[running], position_ids[running]
                past.batch_select_indices(running)
        position_ids = position_ids[:, -1:] + 1
        logits, past = call(next_token.unsqueeze(1), full_mask[:, : prompt_len + steps + 1], position_ids, past)
    response, mask, has_eos = truncate_after_eos(tokens[:, :steps], eos_token_id, pad_token_id)
    # Steps taken after every row had ended (at most FINISHED_CHECK_EVERY - 1) are all padding.
    width = max(int(mask.sum(1).max()), 1)
    return Generation(
        response_ids=response[:, :width], response_mask=mask[:, :width], has_eos=has_eos,
        logprobs=logprobs[:, :width] * mask[:, :width],
    )


class _ForwardCall:
    """One decoding forward of ``model``: the last position's logits (B, V) and the cache, whatever
    this transformers calls the cache argument (``cache`` from 5.25, ``past_key_values`` before)."""

    def __init__(self, model) -> None:
        import inspect

        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        names = inspect.signature(inner.forward).parameters
        self.cache_name = "cache" if "cache" in names else "past_key_values"
        # Only the last position's logits are sampled from: the prompt's need no vocabulary projection.
        self.keep_last = {"logits_to_keep": 1} if accepts_logits_to_keep(model) else {}

    def __call__(self, input_ids, attention_mask, position_ids, past):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{self.cache_name: past}, **self.keep_last)
        return out.logits[:, -1, :], out["cache"] if "cache" in out else out["past_key_values"]


def _sample(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator,
            rows: Optional[torch.Tensor] = None, batch: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` and its log-probability; ``temperature == 0`` is greedy
    (log-prob 0). With ``rows``, the logits are those batch rows of a batch of ``batch``, and the
    noise is drawn for the whole batch: a row's draw does not depend on which others are left."""
    if temperature == 0:
        return logits.argmax(-1), torch.zeros(logits.shape[0], device=logits.device)
    logp = torch.log_softmax(filter_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    noise = gumbel_noise((batch or logp.shape[0], logp.shape[-1]), generator, logp.device)
    if rows is not None and rows.numel() < noise.shape[0]:
        noise = noise[rows]
    token = (logp + noise).argmax(-1, keepdim=True)
    return token.squeeze(-1), logp.gather(-1, token).squeeze(-1)


def sample_responses(
    model, tokenizer, prompts: list[str], sampling, *, samples_per_prompt: int = 1, seed: int = 0
) -> list[list[list[int]]]:
    """Token ids of ``samples_per_prompt`` responses (EOS included when produced) for each prompt."""
    from rlhf_lab.data import encode_prompt, pad_left

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    # Whole prompts per batch, each prefilled once for its samples.
    per_batch = max(1, sampling.batch_size // samples_per_prompt)
    for start in range(0, len(prompts), per_batch):
        ids, mask = pad_left([encode_prompt(tokenizer, p) for p in prompts[start : start + per_batch]], tokenizer.pad_token_id)
        gen = generate(
            model, ids.to(device), mask.to(device),
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_k=sampling.top_k, top_p=sampling.top_p, generator=generator, samples_per_prompt=samples_per_prompt,
        )
        for row, row_mask in zip(gen.response_ids.tolist(), gen.response_mask.tolist()):
            out.append([t for t, m in zip(row, row_mask) if m])
    model.train(was_training)
    return [out[i * samples_per_prompt : (i + 1) * samples_per_prompt] for i in range(len(prompts))]


@dataclass
class Experience:
    """One batch of on-policy experience; every (B, R) tensor is aligned with the response tokens."""

    batch: dict
    """Prompt + response in the shared layout (:func:`rlhf_lab.data.join`)."""
    response_mask: torch.Tensor
    """(B, R) 1.0 for response tokens (EOS included), 0.0 after."""
    logprobs: torch.Tensor
    """(B, R) behaviour policy's log-probs of the sampled tokens, at the sampling temperature."""
    ref_logprobs: torch.Tensor
    """(B, R) the frozen reference's log-probs of the same tokens, at the same temperature."""
    scores: torch.Tensor
    """(B,) the reward function's scores, after the missing-EOS penalty."""
    has_eos: torch.Tensor
    """(B,) whether each response ended with EOS."""
    group_ids: torch.Tensor
    """(B,) index of the prompt each row answers: the k samples of a prompt are consecutive rows."""
    values: Optional[torch.Tensor] = None
    """(B, R) critic values V(s_t) of the state before each response token; None without a critic."""
    reward_details: dict = field(default_factory=dict)
    """(B,) per-row figures the reward function gives beside its scores (a reward-model ensemble's
    ``reward_mean`` and ``reward_spread``; :func:`rlhf_lab.rewards.function.scored`)."""

    @property
    def response_ids(self) -> torch.Tensor:
        return self.batch["input_ids"][:, self.batch["prompt_len"] :]

    def rows(self, idx: torch.Tensor) -> tuple[dict, int]:
        """The batch of rows ``idx`` without the columns that are padding in every one of them (left of
        the prompts, right of the responses), and the response width kept: slice each (B, R) tensor
        of these rows with ``[idx, :width]``. A minibatch then costs what its own rows hold, not what
        the longest prompt and response of the whole rollout hold; the maths is the same, since the
        cut columns are masked out for every row and position ids are kept."""
        batch = {k: (v[idx] if torch.is_tensor(v) else v) for k, v in self.batch.items()}
        p, filled = batch["prompt_len"], batch["attention_mask"].bool().any(0)
        # Column p - 1 (every prompt's last token) and column p (every response's first) stay.
        first = filled[:p].int().argmax()
        last = filled.size(0) - 1 - filled.flip(0).int().argmax()
        first, last = torch.stack([first, last]).tolist()  # one host sync
        for key in ("input_ids", "attention_mask", "position_ids"):
            batch[key] = batch[key][:, first : last + 1]
        batch["prompt_len"] = p - first
        return batch, last + 1 - p


@torch.no_grad()
def collect_experience(
    policy,
    reference,
    reward_fn,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    tokenizer,
    sampling,
    samples_per_prompt: int = 1,
    critic=None,
    missing_eos_penalty: Optional[float] = None,
    generator: torch.Generator | None = None,
    lockstep: bool = False,
) -> Experience:
    """Sample ``samples_per_prompt`` responses per prompt and gather everything an update needs.

    The policy samples in eval mode (no dropout) and is put back in train mode afterwards. Log-probs
    are those of the temperature-scaled distribution, for the policy and the reference alike.
    """
    was_training = policy.training
    policy.eval()
    gen = generate(
        policy, prompt_ids, prompt_mask,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, generator=generator, lockstep=lockstep,
        samples_per_prompt=samples_per_prompt,
    )
    policy.train(was_training)
    if samples_per_prompt > 1:
        prompt_ids = prompt_ids.repeat_interleave(samples_per_prompt, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(samples_per_prompt, dim=0)
    batch = join(prompt_ids, prompt_mask, gen.response_ids, gen.response_mask)
    mask = gen.response_mask.to(gen.logprobs.dtype)
    ref_logprobs = response_logprobs(reference, batch, gen.response_mask, sampling.temperature).to(mask.dtype)
    values = None
    if critic is not None:
        p = batch["prompt_len"]
        values = critic(batch["input_ids"], batch["attention_mask"], batch["position_ids"])[:, p - 1 : -1] * mask
    scores, details = scored(reward_fn, batch)
    scores = scores.float()
    if missing_eos_penalty is not None:
        scores = torch.where(gen.has_eos, scores, scores - missing_eos_penalty)
    group_ids = torch.arange(prompt_ids.shape[0] // samples_per_prompt, device=prompt_ids.device).repeat_interleave(samples_per_prompt)
    return Experience(batch, mask, gen.logprobs, ref_logprobs, scores, gen.has_eos, group_ids, values, details)
