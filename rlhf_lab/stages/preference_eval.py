"""Held-out preferences as a yardstick for any policy, trained by any algorithm, on any data.

A policy pi trained with a KL anchor to its reference pi_ref carries an implicit reward, the log-ratio
``log pi(y|x) - log pi_ref(y|x)`` (Rafailov et al. 2023): DPO optimises it directly, and a KL-regularised
RL policy's optimum is proportional to it as well. How often it ranks the preferred response of a
held-out pair first is a figure that needs no gold utility and no reward model, and it is the same
figure for every algorithm, so DPO, IPO, GRPO and PPO runs on the same data can be compared. The SFT
policy gets it too, against the model it started from: preference training should beat what
supervised fine-tuning alone taught. A reward model is scored on the same pairs.

Pairs whose two responses are the same tokens carry no preference and are left out, as training does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from rlhf_lab.data import batched_pairs, record_response_ids
from rlhf_lab.stats import mean_and_se, paired_difference, preference_outcomes


@dataclass(frozen=True)
class HeldOutPreferences:
    """Held-out preference records, tokenised once: the flat (prompt, response ids) of every response,
    and per record its informative (better, worse) pairs as indices into its own responses."""

    prompts: list[str]
    responses: list[list[int]]
    sizes: list[int]
    pairs: list[list[tuple[int, int]]]

    @classmethod
    def of(cls, records, tokenizer) -> "HeldOutPreferences":
        prompts, responses, sizes, pairs = [], [], [], []
        for record in records:
            ids = record_response_ids(tokenizer, record)
            informative = [(b, w) for b, w in record.preference_pairs() if ids[b] != ids[w]]
            if not informative:
                continue
            prompts += [record.prompt] * len(ids)
            responses += ids
            sizes.append(len(ids))
            pairs.append(informative)
        return cls(prompts, responses, sizes, pairs)

    @property
    def pair_count(self) -> int:
        return sum(len(p) for p in self.pairs)

    def per_record(self, flat_scores: list[float]) -> list[list[float]]:
        """Flat per-response scores regrouped by record."""
        grouped, start = [], 0
        for size in self.sizes:
            grouped.append(flat_scores[start : start + size])
            start += size
        return grouped

    def figures(self, metrics: dict, name: str, flat_scores: list[float]) -> list[float]:
        """``eval/<name>/pref_accuracy`` and ``pref_margin``, each with its SE over records; returns the
        accuracy per record."""
        accuracy, margin = preference_outcomes(self.per_record(flat_scores), self.pairs)
        metrics[f"eval/{name}/pref_accuracy"], metrics[f"eval/{name}/pref_accuracy_se"] = mean_and_se(accuracy)
        metrics[f"eval/{name}/pref_margin"], metrics[f"eval/{name}/pref_margin_se"] = mean_and_se(margin)
        return accuracy


def implicit_rewards(policy, reference, heldout: HeldOutPreferences) -> list[float]:
    """``log pi(y|x) - log pi_ref(y|x)`` of every held-out response, in nats (no beta: the same scale for
    every algorithm). ``policy`` and ``reference`` are :class:`~rlhf_lab.policy.ModelPolicy`."""
    return (policy.sequence_logprobs(heldout.prompts, heldout.responses)
            - reference.sequence_logprobs(heldout.prompts, heldout.responses)).tolist()


@torch.no_grad()
def reward_figures(reward_fn, tokenizer, prompts: list[str], responses: list[list[int]], device, batch_size: int = 128) -> dict[str, list[float]]:
    """The run's reward function on each (prompt, response ids): ``proxy_reward``, and the per-response
    details it gives (an ensemble's ``reward_mean`` and ``reward_spread``)."""
    from rlhf_lab.rewards.function import scored

    reward_fn.to(device)
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in batched_pairs(tokenizer, prompts, responses, batch_size, device):
        scores, details = scored(reward_fn, batch)
        for name, values in {"proxy_reward": scores, **details}.items():
            parts.setdefault(name, []).append(values.float().cpu())
    return {name: torch.cat(values).tolist() for name, values in parts.items()}


def reward_scores(reward_fn, tokenizer, prompts: list[str], responses: list[list[int]], device, batch_size: int = 128) -> list[float]:
    """The run's reward function on each (prompt, response ids): a policy's samples, or held-out responses."""
    return reward_figures(reward_fn, tokenizer, prompts, responses, device, batch_size)["proxy_reward"]


def reward_model_scores(reward_fn, tokenizer, heldout: HeldOutPreferences, device) -> list[float]:
    """The run's reward function on every held-out response."""
    return reward_scores(reward_fn, tokenizer, heldout.prompts, heldout.responses, device)


@dataclass
class Yardsticks:
    """What evaluation measures besides samples: held-out preferences, and an AI judge.

    :param heldout: the run's held-out preference records, tokenised; None without any.
    :param anchors: policy name -> the :class:`~rlhf_lab.policy.ModelPolicy` its implicit reward is
        measured against (the optimised policy's reference; for SFT, the model it started from).
    :param judge: ``judge(triples) -> (p_first_better, p_label_a)`` over (prompt, first, second)
        triples, asked in both orders (:class:`~rlhf_lab.feedback.ai_judge.PairJudge`); None without one.
    """

    heldout: Optional[HeldOutPreferences] = None
    anchors: dict = field(default_factory=dict)
    judge: Optional[Callable] = None

    def score_preferences(self, metrics: dict, policies: dict, reward_fn, tokenizer, device, baseline: str = "sft") -> None:
        """Every anchored policy's implicit-reward figures, and the reward function's, on the held-out pairs;
        each policy's accuracy less the baseline's, paired by record (``pref_accuracy_diff`` with its SE)."""
        if self.heldout is None or not self.heldout.sizes:
            return
        metrics["eval/heldout_preference_records"] = len(self.heldout.sizes)
        metrics["eval/heldout_preference_pairs"] = self.heldout.pair_count
        accuracy = {}
        for name, policy in policies.items():
            if name in self.anchors and hasattr(policy, "sequence_logprobs"):
                accuracy[name] = self.heldout.figures(metrics, name, implicit_rewards(policy, self.anchors[name], self.heldout))
        for name, values in accuracy.items():
            if name != baseline and baseline in accuracy:
                metrics[f"eval/{name}/pref_accuracy_diff"], metrics[f"eval/{name}/pref_accuracy_diff_se"] = paired_difference(values, accuracy[baseline])
        if reward_fn is not None:
            self.heldout.figures(metrics, "reward_model", reward_model_scores(reward_fn, tokenizer, self.heldout, device))
