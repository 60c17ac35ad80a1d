"""Evaluation on held-out prompts: gold and proxy reward, KL to the reference, win rate, length, perplexity."""

from __future__ import annotations

import math

import torch

from rlhf_lab.data import batched_pairs, decode_response, response_logits
from rlhf_lab.ops.sequence import token_logprobs
from rlhf_lab.rollout import sample_responses
from rlhf_lab.stages.sft import demonstration_loader, response_nll, tokenize_demonstrations


@torch.no_grad()
def _sequence_stats(policy, reference, reward_model, normaliser, tokenizer, prompts, responses, batch_size=128):
    """Per-sequence KL(policy || reference) (sum of k1 over tokens) and normalised proxy reward."""
    kls, proxies = [], []
    for batch in batched_pairs(tokenizer, prompts, responses, batch_size, next(policy.parameters()).device):
        p = batch["prompt_len"]
        tokens, mask = batch["input_ids"][:, p:], batch["attention_mask"][:, p:]
        logp = token_logprobs(response_logits(policy, batch), tokens)
        ref_logp = token_logprobs(response_logits(reference, batch), tokens)
        kls.append(((logp - ref_logp) * mask).sum(1).cpu())
        if reward_model is not None:
            scores = reward_model.sequence_scores(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
            proxies.append(normaliser(scores).cpu())
    return torch.cat(kls), (torch.cat(proxies) if proxies else None)


@torch.no_grad()
def perplexity(policy, tokenizer, demonstrations) -> float:
    """Token-level perplexity of the policy on held-out demonstration responses."""
    device = next(policy.parameters()).device
    total, count = 0.0, 0
    for batch in demonstration_loader(tokenize_demonstrations(tokenizer, demonstrations), tokenizer.pad_token_id, 128, False, 0):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        nll, mask = response_nll(policy, batch)
        total += float((nll * mask).sum())
        count += int(mask.sum())
    return math.exp(total / max(count, 1))


def evaluate_policies(policies: dict, reference, reward_model, normaliser, tokenizer, task, eval_cfg, seed: int, baseline: str = "sft"):
    """Score every policy in ``policies`` on the task's held-out prompts.

    :returns: ``(metrics, samples)``: metrics named ``eval/<policy>/<figure>`` plus win rates of each
        policy against ``baseline``; samples are dicts (prompt, response per policy, gold per policy).
    """
    prompts = [p for p in task.eval_prompts for _ in range(eval_cfg.samples_per_prompt)]
    metrics: dict[str, float] = {}
    gold: dict[str, list[float]] = {}
    proxy: dict[str, torch.Tensor] = {}
    texts: dict[str, list[str]] = {}
    for name, policy in policies.items():
        policy.eval()
        # The same seed for every policy: responses differ only through the policies themselves.
        grouped = sample_responses(policy, tokenizer, task.eval_prompts, eval_cfg.sampling, samples_per_prompt=eval_cfg.samples_per_prompt, seed=seed)
        responses = [r for group in grouped for r in group]
        texts[name] = [decode_response(tokenizer, r) for r in responses]
        kl, proxy_scores = _sequence_stats(policy, reference, reward_model, normaliser, tokenizer, prompts, responses)
        metrics[f"eval/{name}/kl"] = float(kl.mean())
        metrics[f"eval/{name}/response_length"] = sum(len(r) for r in responses) / len(responses)
        metrics[f"eval/{name}/eos_rate"] = sum(bool(r) and r[-1] == tokenizer.eos_token_id for r in responses) / len(responses)
        metrics[f"eval/{name}/perplexity"] = perplexity(policy, tokenizer, task.sft_eval)
        if proxy_scores is not None:
            proxy[name] = proxy_scores
            metrics[f"eval/{name}/proxy_reward"] = float(proxy_scores.mean())
        if task.utility is not None:
            gold[name] = [task.utility(p, t) for p, t in zip(prompts, texts[name])]
            metrics[f"eval/{name}/gold_reward"] = sum(gold[name]) / len(gold[name])
    for name in policies:
        if name == baseline:
            continue
        if gold:
            metrics[f"eval/{name}/win_rate"] = win_rate(gold[name], gold[baseline])
        if proxy:
            metrics[f"eval/{name}/proxy_win_rate"] = win_rate(proxy[name].tolist(), proxy[baseline].tolist())
    samples = [
        {"prompt": prompts[i], **{f"{n}_response": texts[n][i] for n in policies}, **{f"{n}_gold": gold[n][i] for n in gold}}
        for i in range(len(prompts))
    ]
    return metrics, samples


def win_rate(candidate: list[float], baseline: list[float]) -> float:
    """Share of paired comparisons the candidate wins; ties count one half."""
    wins = sum(1.0 if c > b else 0.5 if c == b else 0.0 for c, b in zip(candidate, baseline))
    return wins / len(candidate)
