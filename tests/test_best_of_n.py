"""Best-of-n as a policy handle (rlhf_lab/algos/best_of_n.py): the selection, and its KL estimate
built from exact reference log-probs and the share of reference samples that score below."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lab.algos.best_of_n import BestOfNPolicy
from rlhf_lab.config import SamplingConfig
from rlhf_lab.data import encode_response
from rlhf_lab.models.loading import load_policy, load_tokenizer
from rlhf_lab.ops.best_of_n import best_of_n_kl_closed_form
from rlhf_lab.policy import ModelPolicy
from rlhf_lab.rewards.function import RuleReward
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task


class ScriptedPolicy(ModelPolicy):
    """A real model and tokenizer, but samples and log-probs given by the test."""

    def __init__(self, model, tokenizer, samples: dict, logps: dict) -> None:
        super().__init__(model, tokenizer)
        self.samples, self.logps, self.calls = samples, logps, []

    def sample(self, prompts, sampling, samples_per_prompt, seed):
        self.calls.append((tuple(prompts), samples_per_prompt, sampling))
        return [self.samples[p][:samples_per_prompt] for p in prompts]

    def sequence_logprobs(self, prompts, responses):
        return torch.tensor([self.logps[tuple(r)] for r in responses])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("toy_model")
    make_toy_task(ToyTaskConfig(num_sft_examples=200), seed=0).build_base_model(model_dir)
    return load_policy(str(model_dir)), load_tokenizer(str(model_dir))


def words(tokenizer, n: int) -> list[int]:
    """A response of ``n`` words (the rule below scores it n)."""
    return encode_response(tokenizer, " ".join(["good"] * n))


def test_keeps_the_best_of_each_block_of_n(toy):
    model, tok = toy
    lengths = [2, 5, 3, 4, 1, 6]  # two blocks of n=3: best are 5 words, then 6 words
    base = ScriptedPolicy(model, tok, {"p": [words(tok, k) for k in lengths]}, {})
    policy = BestOfNPolicy(base, RuleReward(lambda prompt, response: float(len(response.split())), tok), n=3, kl_samples=4, sampling=SamplingConfig())
    sampling = SamplingConfig(temperature=0.5)
    out = policy.sample(["p"], sampling, samples_per_prompt=2, seed=0)
    assert out == [[words(tok, 5), words(tok, 6)]]
    assert base.calls == [(("p",), 6, sampling)]  # n draws per requested sample
    assert policy.analytic_kl == pytest.approx(math.log(3) - 2 / 3)


def test_kl_estimate_uses_exact_p_and_the_share_scoring_below(toy):
    model, tok = toy
    chosen, same_score, lower, higher = words(tok, 2), encode_response(tok, "bad bad"), words(tok, 1), words(tok, 3)
    # Reference samples: one lower (counts 1), the chosen response itself (counts 0: its mass is p),
    # another response with the same score (counts 1/2) and one higher (counts 0): F = 1.5 / 4.
    reference = ScriptedPolicy(model, tok, {"p": [lower, chosen, same_score, higher]}, {tuple(chosen): math.log(0.1)})
    policy = BestOfNPolicy(reference, RuleReward(lambda prompt, response: float(len(response.split())), tok), n=4, kl_samples=4, sampling=SamplingConfig())
    policy.sample(["p"], SamplingConfig(temperature=0.7), samples_per_prompt=1, seed=0)
    got = policy.kl_to_reference(reference, ["p"], [chosen])
    f, p = 1.5 / 4, 0.1
    assert float(got[0]) == pytest.approx(math.log((f + p) ** 4 - f ** 4) - math.log(p), rel=1e-5)
    # the reference samples were drawn with the sampling the candidates came from, kl_samples of them
    assert reference.calls[-1][1:] == (4, SamplingConfig(temperature=0.7))
    assert best_of_n_kl_closed_form(4) == pytest.approx(math.log(4) - 0.75)
