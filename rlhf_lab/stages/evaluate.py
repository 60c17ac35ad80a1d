"""Evaluation on held-out prompts, one stage for every algorithm.

Each policy is reached through a :class:`~rlhf_lab.policy.PolicyHandle` (sample, KL to the reference),
so a policy that was never trained (best-of-n) is evaluated exactly like a trained one. Figures per
policy: gold reward (where the task knows its utility), proxy reward (where the run has a reward
function), KL to the reference, response length, EOS rate, perplexity on held-out demonstrations
(where the policy is one network), BLEU and ROUGE-L against reference answers (where the task has
them), distinct-1 and distinct-2. Every mean comes with its standard error; each policy is compared
with the baseline on the same prompts and seeds (paired differences, win rates by gold reward, by the
reward function and by an AI judge, raw and length-controlled, each with a bootstrap interval), so a
verdict can tell a real change from noise. Held-out preference records score every policy's implicit
reward and the reward model (:mod:`rlhf_lab.stages.preference_eval`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from rlhf_lab.data import decode_response
from rlhf_lab.stages.sft import demonstration_loader, response_nll, tokenize_demonstrations
from rlhf_lab.stages.preference_eval import Yardsticks, reward_figures
from rlhf_lab.stats import length_controlled_win_rate, mean_and_se, paired_difference, win_rate, win_rate_interval
from rlhf_lab.text_metrics import corpus_bleu, distinct_n, rouge_l


@torch.no_grad()
def perplexity(policy, tokenizer, demonstrations, limits=None) -> float:
    """Token-level perplexity of the policy on held-out demonstration responses (cut to ``limits``)."""
    device = next(policy.parameters()).device
    total, count = 0.0, 0
    for batch in demonstration_loader(tokenize_demonstrations(tokenizer, demonstrations, limits), tokenizer.pad_token_id, 128, False, 0):
        batch = {key: (value.to(device) if torch.is_tensor(value) else value) for key, value in batch.items()}
        nll = response_nll(policy, batch)
        total += float(nll.sum())
        count += nll.numel()
    mean_nll = total / max(count, 1)
    return math.exp(mean_nll) if mean_nll < 709.0 else math.inf  # exp overflows a float past ~709.78


def _figure(metrics: dict, name: str, figure: str, values: list[float]) -> None:
    metrics[f"eval/{name}/{figure}"], metrics[f"eval/{name}/{figure}_se"] = mean_and_se(values)


@dataclass
class _Evaluation:
    """What every policy is scored against: the same prompts, seed, reference, reward function and task."""

    reference: object
    reward_fn: object
    tokenizer: object
    task: object
    eval_cfg: object
    seed: int
    limits: object
    prompts: list[str]  # the held-out prompts, each repeated samples_per_prompt times (one per response)
    device: torch.device

    def sample(self, policy) -> tuple[list[list[int]], list[str]]:
        """The policy's responses to the prompts, as token ids and as decoded text."""
        if policy.model is not None:
            policy.model.eval()
        # The same seed for every policy: responses differ only through the policies themselves.
        grouped = policy.sample(self.task.eval_prompts, self.eval_cfg.sampling, self.eval_cfg.samples_per_prompt, self.seed)
        responses = [response for group in grouped for response in group]
        return responses, [decode_response(self.tokenizer, response) for response in responses]

    def per_sample_figures(self, policy, responses: list[list[int]], texts: list[str]) -> dict[str, list[float]]:
        """Figures with one value per response (the ones that get means, standard errors and paired differences)."""
        figures = {
            "kl": policy.kl_to_reference(self.reference, self.prompts, responses).tolist(),
            "response_length": [float(len(response)) for response in responses],
        }
        if self.reward_fn is not None:
            figures.update(reward_figures(self.reward_fn, self.tokenizer, self.prompts, responses, self.device))
        if self.task.utility is not None:
            figures["gold_reward"] = [self.task.utility(prompt, text) for prompt, text in zip(self.prompts, texts)]
        return figures

    def against_references(self, texts: list[str]) -> Optional[tuple[list[float], float]]:
        """(ROUGE-L per response, corpus BLEU) over the prompts the task has reference answers for; None without any."""
        referenced = [i for i, prompt in enumerate(self.prompts) if prompt in self.task.references]
        if not referenced:
            return None
        hypotheses = [texts[i] for i in referenced]
        references = [self.task.references[self.prompts[i]] for i in referenced]
        return rouge_l(hypotheses, references), corpus_bleu(hypotheses, references)

    def score(self, metrics: dict, name: str, policy) -> tuple[list[str], dict[str, list[float]]]:
        """Add the policy's figures to ``metrics``; returns its texts and per-response figures."""
        responses, texts = self.sample(policy)
        figures = self.per_sample_figures(policy, responses, texts)
        scored = self.against_references(texts)
        if scored is not None:
            figures["rouge_l"], metrics[f"eval/{name}/bleu"] = scored
        for figure, values in figures.items():
            _figure(metrics, name, figure, values)
        for n in (1, 2):
            metrics[f"eval/{name}/distinct_{n}"] = distinct_n(texts, n)
        eos_token = self.tokenizer.eos_token_id
        metrics[f"eval/{name}/eos_rate"] = sum(bool(response) and response[-1] == eos_token for response in responses) / len(responses)
        if policy.model is not None and self.task.sft_eval:
            metrics[f"eval/{name}/perplexity"] = perplexity(policy.model, self.tokenizer, self.task.sft_eval, self.limits)
        if hasattr(policy, "analytic_kl"):
            metrics[f"eval/{name}/kl_closed_form"] = policy.analytic_kl
        return texts, figures


def win_rate_figures(metrics: dict, prefix: str, candidate: list[float], baseline: list[float], length_difference: list[float], seed: int) -> None:
    """``<prefix>win_rate`` with its 95% bootstrap interval (``_low``, ``_high``), and the length-controlled
    win rate ``<prefix>lc_win_rate`` with its own (:func:`~rlhf_lab.stats.length_controlled_win_rate`)."""
    metrics[f"{prefix}win_rate"] = win_rate(candidate, baseline)
    metrics[f"{prefix}win_rate_low"], metrics[f"{prefix}win_rate_high"] = win_rate_interval(candidate, baseline, seed=seed)
    rate, low, high = length_controlled_win_rate(candidate, baseline, length_difference, seed=seed)
    metrics[f"{prefix}lc_win_rate"], metrics[f"{prefix}lc_win_rate_low"], metrics[f"{prefix}lc_win_rate_high"] = rate, low, high


def _compare_with_baseline(metrics: dict, per_sample: dict[str, dict[str, list[float]]], baseline: str, seed: int) -> None:
    """Paired differences and win rates (raw and length-controlled, with intervals) of every policy against
    the baseline, on the same prompts and seeds: by gold reward (``win_rate``) and by the reward function
    (``proxy_win_rate``)."""
    base = per_sample[baseline]
    for name, figures in per_sample.items():
        if name == baseline:
            continue
        for figure in ("gold_reward", "proxy_reward", "response_length", "rouge_l"):
            if figure in figures:
                metrics[f"eval/{name}/{figure}_diff"], metrics[f"eval/{name}/{figure}_diff_se"] = paired_difference(figures[figure], base[figure])
        longer = [c - b for c, b in zip(figures["response_length"], base["response_length"])]
        for figure, prefix in (("gold_reward", ""), ("proxy_reward", "proxy_")):
            if figure in figures:
                win_rate_figures(metrics, f"eval/{name}/{prefix}", figures[figure], base[figure], longer, seed)


def _judge_against_baseline(metrics: dict, judge, prompts: list[str], texts: dict[str, list[str]],
                            per_sample: dict[str, dict[str, list[float]]], baseline: str, seed: int) -> None:
    """The AI judge's verdict on each policy's response against the baseline's to the same prompt and seed,
    asked in both orders: ``judge_win_rate`` (raw and length-controlled, with intervals) and the judge's
    position bias (its mean P(label A) over both orders, less 1/2)."""
    base = per_sample[baseline]
    for name in texts:
        if name == baseline:
            continue
        better, label_a = judge(list(zip(prompts, texts[name], texts[baseline])))
        longer = [c - b for c, b in zip(per_sample[name]["response_length"], base["response_length"])]
        win_rate_figures(metrics, f"eval/{name}/judge_", better, [1.0 - p for p in better], longer, seed)
        metrics[f"eval/{name}/judge_position_bias"] = sum(label_a) / len(label_a) - 0.5


def _sample_rows(prompts: list[str], texts: dict[str, list[str]], per_sample: dict[str, dict[str, list[float]]], references: dict) -> list[dict]:
    """One row per response slot: the prompt, each policy's response and rewards, and the reference answer if any."""
    return [
        {
            "prompt": prompt,
            **{f"{name}_response": texts[name][i] for name in texts},
            **{f"{name}_gold": figures["gold_reward"][i] for name, figures in per_sample.items() if "gold_reward" in figures},
            **{f"{name}_proxy": figures["proxy_reward"][i] for name, figures in per_sample.items() if "proxy_reward" in figures},
            **({"reference": references[prompt]} if prompt in references else {}),
        }
        for i, prompt in enumerate(prompts)
    ]


def evaluate_policies(policies: dict, reference, reward_fn, tokenizer, task, eval_cfg, seed: int, baseline: str = "sft", limits=None,
                      yardsticks: Optional[Yardsticks] = None):
    """Score every policy handle in ``policies`` on the task's held-out prompts.

    :param policies: name -> policy handle; must include ``baseline``.
    :param reference: the reference as a :class:`~rlhf_lab.policy.ModelPolicy` (KL is measured to it).
    :param reward_fn: the run's reward function (proxy reward), or None.
    :param limits: length limits that demonstrations are cut to (``data.truncate=true``), or None.
    :param yardsticks: held-out preferences and an AI judge to score the policies with, where the run has them.
    :returns: ``(metrics, samples)``: metrics named ``eval/<policy>/<figure>`` (see the module docstring),
        samples are dicts (prompt, response, gold and proxy reward per policy, the reference answer).
    """
    prompts = [prompt for prompt in task.eval_prompts for _ in range(eval_cfg.samples_per_prompt)]
    device = next(reference.model.parameters()).device
    evaluation = _Evaluation(reference, reward_fn, tokenizer, task, eval_cfg, seed, limits, prompts, device)
    metrics: dict[str, float] = {}
    per_sample: dict[str, dict[str, list[float]]] = {}
    texts: dict[str, list[str]] = {}
    for name, policy in policies.items():
        texts[name], per_sample[name] = evaluation.score(metrics, name, policy)
    _compare_with_baseline(metrics, per_sample, baseline, seed)
    if yardsticks is not None:
        yardsticks.score_preferences(metrics, policies, reward_fn, tokenizer, device, baseline)
        if yardsticks.judge is not None:
            _judge_against_baseline(metrics, yardsticks.judge, prompts, texts, per_sample, baseline, seed)
    return metrics, _sample_rows(prompts, texts, per_sample, task.references)
