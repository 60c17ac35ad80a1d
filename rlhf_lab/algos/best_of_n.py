"""Best-of-n: sample n responses from the SFT policy and keep the one the reward function scores highest.

Nothing is trained: the algorithm is a :class:`~rlhf_lab.policy.PolicyHandle` that the shared
evaluation samples from like any other policy. Its KL to the reference has no per-token log-probs;
it is estimated per response as ``log pi_n(y) / pi(y) = log((F + p)^n - F^n) - log p`` with
``p = pi(y)`` exact from the reference and ``F`` the share of reference samples that score below ``y``
(another response with the same score counts one half), and reported beside the closed form ``log n - (n - 1) / n`` (Stiennon et al.
2020), which is exact only for a continuous reward and an upper bound otherwise (Beirami et al. 2024).
"""

from __future__ import annotations

import torch

from rlhf_lab.algos.best_of_n_config import BestOfNConfig
from rlhf_lab.algos.inputs import AlgoInputs
from rlhf_lab.data import batched_pairs
from rlhf_lab.ops.best_of_n import best_of_n_kl_closed_form, best_of_n_log_ratio
from rlhf_lab.policy import ModelPolicy


class BestOfNPolicy:
    """The best of ``n`` samples of a base policy under a reward function."""

    model = None  # not a single network: no perplexity, nothing to save

    def __init__(self, base: ModelPolicy, reward_fn, n: int, kl_samples: int, sampling) -> None:
        self.base, self.reward_fn, self.n, self.kl_samples, self.sampling = base, reward_fn, n, kl_samples, sampling

    @property
    def analytic_kl(self) -> float:
        """The closed form ``log n - (n - 1) / n``, reported beside the estimate."""
        return best_of_n_kl_closed_form(self.n)

    @torch.no_grad()
    def scores(self, prompts: list[str], responses: list[list[int]]) -> torch.Tensor:
        """(N,) reward of each (prompt, response), in order."""
        device = next(self.base.model.parameters()).device
        self.reward_fn.to(device)
        return torch.cat([self.reward_fn(b).cpu() for b in batched_pairs(self.base.tokenizer, prompts, responses, 128, device)])

    def sample(self, prompts, sampling, samples_per_prompt, seed):
        self.sampling = sampling  # the KL estimate must see the distribution the candidates came from
        grouped = self.base.sample(prompts, sampling, samples_per_prompt * self.n, seed)
        out = []
        for prompt, group in zip(prompts, grouped):
            scores = self.scores([prompt] * len(group), group).view(samples_per_prompt, self.n)
            best = scores.argmax(1).tolist()
            out.append([group[i * self.n + b] for i, b in enumerate(best)])
        return out

    def kl_to_reference(self, reference: ModelPolicy, prompts, responses):
        """Per-response estimate of log pi_n(y) / pi(y) (see the module docstring); the mean is the KL."""
        logp = reference.sequence_logprobs(prompts, responses)
        chosen = self.scores(prompts, responses)
        unique = list(dict.fromkeys(prompts))
        # Reference samples per prompt give the share F of responses that score below each chosen one;
        # another response with the same score counts one half, the chosen response itself not at all
        # (its own mass is p).
        grouped = dict(zip(unique, reference.sample(unique, self.sampling, self.kl_samples, seed=1)))
        ref_scores = {prompt: self.scores([prompt] * len(group), group) for prompt, group in grouped.items()}
        shares = []
        for prompt, response, score in zip(prompts, responses, chosen.tolist()):
            others = torch.tensor([sample != response for sample in grouped[prompt]])
            scores = ref_scores[prompt]
            # Copies of the response itself count nowhere, even if a learned reward scores them a
            # rounding error apart in another batch.
            shares.append((((scores < score) & others).float() + 0.5 * ((scores == score) & others).float()).mean())
        f = torch.stack(shares)
        return best_of_n_log_ratio(logp, f, self.n)


def best_of_n(cfg: BestOfNConfig, inputs: AlgoInputs) -> BestOfNPolicy:
    """The ``algo=best_of_n`` factory: the policy handle itself (there is nothing to train)."""
    return BestOfNPolicy(ModelPolicy(inputs.reference, inputs.tokenizer), inputs.reward, cfg.n, cfg.kl_samples, cfg.sampling)

