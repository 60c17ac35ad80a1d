"""Policy handles: what evaluation needs of a policy, whether it was trained or not.

A handle samples responses and estimates its KL to the reference per response. A trained policy is a
:class:`ModelPolicy` around its causal LM; a policy that was never trained (best-of-n) implements the
same two methods, so one evaluation serves every algorithm.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch

from rlhf_lab.data import batched_pairs, response_logprobs
from rlhf_lab.rollout import sample_responses


class PolicyHandle(Protocol):
    """The evaluation's view of a policy."""

    model: Optional[torch.nn.Module]
    """The causal LM when the policy is one (perplexity and saving need it), else None."""

    def sample(self, prompts: list[str], sampling, samples_per_prompt: int, seed: int) -> list[list[list[int]]]:
        """Token ids of ``samples_per_prompt`` responses per prompt (EOS included where produced)."""

    def kl_to_reference(self, reference: "ModelPolicy", prompts: list[str], responses: list[list[int]]) -> torch.Tensor:
        """(N,) per-response estimate of KL(policy || reference), for responses sampled from this policy."""


class ModelPolicy:
    """A causal LM as a policy."""

    def __init__(self, model, tokenizer, batch_size: int = 128) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def sample(self, prompts, sampling, samples_per_prompt, seed):
        return sample_responses(self.model, self.tokenizer, prompts, sampling, samples_per_prompt=samples_per_prompt, seed=seed)

    @torch.no_grad()
    def sequence_logprobs(self, prompts: list[str], responses: list[list[int]]) -> torch.Tensor:
        """(N,) log pi(response | prompt), summed over the response tokens (temperature 1)."""
        out = []
        for batch in batched_pairs(self.tokenizer, prompts, responses, self.batch_size, next(self.model.parameters()).device):
            # Only the response tokens reach the output layer: after sampling, most response columns are padding.
            out.append(response_logprobs(self.model, batch, batch["attention_mask"][:, batch["prompt_len"]:]).sum(1).cpu())
        return torch.cat(out)

    def kl_to_reference(self, reference, prompts, responses):
        """Monte-Carlo KL: the mean over samples of log pi(y) - log ref(y) (k1, unbiased)."""
        if reference.model is self.model:  # the reference itself: exactly 0, no forward needed
            return torch.zeros(len(responses))
        return self.sequence_logprobs(prompts, responses) - reference.sequence_logprobs(prompts, responses)
