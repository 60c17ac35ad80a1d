"""Evaluation on held-out prompts, one stage for every algorithm.

Each policy is reached through a :class:`~rlhf_lab.policy.PolicyHandle` (sample, KL to the reference),
so a policy that was never trained (best-of-n) is evaluated exactly like a trained one. Figures per
policy: gold reward (where the task knows its utility), proxy reward (where the run has a reward
function), KL to the reference, response length, EOS rate, perplexity on held-out demonstrations
(where the policy is one network), BLEU and ROUGE-L against reference answers (where the task has
them), distinct-1 and distinct-2. Every mean comes with its standard error; each policy is compared
with the baseline on the same prompts and seeds (paired differences, win rate with a bootstrap
interval), so a verdict can tell a real change from noise.
"""

from __future__ import annotations

import math

import torch

from rlhf_lab.data import batched_pairs, decode_response
from rlhf_lab.stages.sft import demonstration_loader, response_nll, tokenize_demonstrations
from rlhf_lab.stats import mean_and_se, paired_difference, win_rate, win_rate_interval
from rlhf_lab.text_metrics import corpus_bleu, distinct_n, rouge_l


@torch.no_grad()
def perplexity(policy, tokenizer, demonstrations, limits=None) -> float:
    """Token-level perplexity of the policy on held-out demonstration responses (cut to ``limits``)."""
    device = next(policy.parameters()).device
    total, count = 0.0, 0
    for batch in demonstration_loader(tokenize_demonstrations(tokenizer, demonstrations, limits), tokenizer.pad_token_id, 128, False, 0):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        nll, mask = response_nll(policy, batch)
        total += float((nll * mask).sum())
        count += int(mask.sum())
    mean_nll = total / max(count, 1)
    return math.exp(mean_nll) if mean_nll < 709.0 else math.inf  # exp overflows a float past ~709.78


@torch.no_grad()
def _proxy_scores(reward_fn, tokenizer, prompts, responses, device) -> list[float]:
    reward_fn.to(device)
    return torch.cat([reward_fn(b).cpu() for b in batched_pairs(tokenizer, prompts, responses, 128, device)]).tolist()


def _figure(metrics: dict, name: str, figure: str, values: list[float]) -> None:
    metrics[f"eval/{name}/{figure}"], metrics[f"eval/{name}/{figure}_se"] = mean_and_se(values)


def evaluate_policies(policies: dict, reference, reward_fn, tokenizer, task, eval_cfg, seed: int, baseline: str = "sft", limits=None):
    """Score every policy handle in ``policies`` on the task's held-out prompts.

    :param policies: name -> policy handle; must include ``baseline``.
    :param reference: the reference as a :class:`~rlhf_lab.policy.ModelPolicy` (KL is measured to it).
    :param reward_fn: the run's reward function (proxy reward), or None.
    :param limits: length limits that demonstrations are cut to (``data.truncate=true``), or None.
    :returns: ``(metrics, samples)``: metrics named ``eval/<policy>/<figure>`` (see the module docstring),
        samples are dicts (prompt, response, gold and proxy reward per policy, the reference answer).
    """
    prompts = [p for p in task.eval_prompts for _ in range(eval_cfg.samples_per_prompt)]
    device = next(reference.model.parameters()).device
    metrics: dict[str, float] = {}
    per_sample: dict[str, dict[str, list[float]]] = {}
    texts: dict[str, list[str]] = {}
    for name, policy in policies.items():
        if policy.model is not None:
            policy.model.eval()
        # The same seed for every policy: responses differ only through the policies themselves.
        grouped = policy.sample(task.eval_prompts, eval_cfg.sampling, eval_cfg.samples_per_prompt, seed)
        responses = [r for group in grouped for r in group]
        texts[name] = [decode_response(tokenizer, r) for r in responses]
        figures = {
            "kl": policy.kl_to_reference(reference, prompts, responses).tolist(),
            "response_length": [float(len(r)) for r in responses],
        }
        if reward_fn is not None:
            figures["proxy_reward"] = _proxy_scores(reward_fn, tokenizer, prompts, responses, device)
        if task.utility is not None:
            figures["gold_reward"] = [task.utility(p, t) for p, t in zip(prompts, texts[name])]
        referenced = [i for i, p in enumerate(prompts) if p in task.references]
        if referenced:
            hypotheses, references = [texts[name][i] for i in referenced], [task.references[prompts[i]] for i in referenced]
            figures["rouge_l"] = rouge_l(hypotheses, references)
            metrics[f"eval/{name}/bleu"] = corpus_bleu(hypotheses, references)
        for figure, values in figures.items():
            _figure(metrics, name, figure, values)
        for n in (1, 2):
            metrics[f"eval/{name}/distinct_{n}"] = distinct_n(texts[name], n)
        metrics[f"eval/{name}/eos_rate"] = sum(bool(r) and r[-1] == tokenizer.eos_token_id for r in responses) / len(responses)
        if policy.model is not None and task.sft_eval:
            metrics[f"eval/{name}/perplexity"] = perplexity(policy.model, tokenizer, task.sft_eval, limits)
        if hasattr(policy, "analytic_kl"):
            metrics[f"eval/{name}/kl_closed_form"] = policy.analytic_kl
        per_sample[name] = figures
    base = per_sample[baseline]
    for name, figures in per_sample.items():
        if name == baseline:
            continue
        for figure in ("gold_reward", "proxy_reward", "response_length", "rouge_l"):
            if figure in figures:
                diff, se = paired_difference(figures[figure], base[figure])
                metrics[f"eval/{name}/{figure}_diff"], metrics[f"eval/{name}/{figure}_diff_se"] = diff, se
        if "gold_reward" in figures:
            metrics[f"eval/{name}/win_rate"] = win_rate(figures["gold_reward"], base["gold_reward"])
            low, high = win_rate_interval(figures["gold_reward"], base["gold_reward"], seed=seed)
            metrics[f"eval/{name}/win_rate_low"], metrics[f"eval/{name}/win_rate_high"] = low, high
        if "proxy_reward" in figures:
            metrics[f"eval/{name}/proxy_win_rate"] = win_rate(figures["proxy_reward"], base["proxy_reward"])
    samples = [
        {
            "prompt": prompts[i],
            **{f"{n}_response": texts[n][i] for n in policies},
            **{f"{n}_gold": per_sample[n]["gold_reward"][i] for n in policies if "gold_reward" in per_sample[n]},
            **{f"{n}_proxy": per_sample[n]["proxy_reward"][i] for n in policies if "proxy_reward" in per_sample[n]},
            **({"reference": task.references[prompts[i]]} if prompts[i] in task.references else {}),
        }
        for i in range(len(prompts))
    ]
    return metrics, samples
