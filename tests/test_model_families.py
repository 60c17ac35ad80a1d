"""Models people use: Llama, Qwen2 and Mistral shapes, loaded from a directory through from_pretrained,
with a tokenizer that has no pad token. Left-padded generation must equal generation alone, and a
whole run must go through the CLI."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab.data import encode_prompt, pad_left
from rlhf_lab.models.loading import load_policy, load_tokenizer
from rlhf_lab.rollout import generate

from conftest import read_metrics, run_cli

PROMPTS = ["describe the quiet garden .", "tell me about the famous old river over there .", "what ?"]


@pytest.fixture(scope="module")
def tokenizer_without_pad(tmp_path_factory):
    """The toy task's BPE tokenizer, saved again without a pad token (as many LLM tokenizers ship)."""
    from transformers import PreTrainedTokenizerFast

    from rlhf_lab.tasks.toy import EOS_TOKEN, ToyTaskConfig, make_toy_task

    toy = tmp_path_factory.mktemp("toy")
    make_toy_task(ToyTaskConfig(num_sft_examples=200), seed=0).build_base_model(toy)
    backend = load_tokenizer(str(toy)).backend_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN)


def _model_dir(root, family: str, tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=len(tokenizer), max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **shape))
    with torch.no_grad():  # larger weights: greedy continuations then depend on positions and history
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_left_padded_generation_equals_each_prompt_alone(tmp_path, family, tokenizer_without_pad):
    path = _model_dir(tmp_path, family, tokenizer_without_pad)
    tokenizer, model = load_tokenizer(str(path)), load_policy(str(path)).eval()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # no pad token: EOS pads
    encoded = [encode_prompt(tokenizer, p) for p in PROMPTS]
    ids, mask = pad_left(encoded, tokenizer.pad_token_id)
    batch = generate(model, ids, mask, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id, max_new_tokens=6, temperature=0.0)
    for row, prompt in enumerate(encoded):
        alone = torch.tensor([prompt])
        single = generate(model, alone, torch.ones_like(alone), eos_token_id=-1, pad_token_id=tokenizer.pad_token_id, max_new_tokens=6, temperature=0.0)
        assert batch.response_ids[row].tolist() == single.response_ids[0].tolist(), f"{family}: row {row} depends on its padding"


@pytest.mark.slow
def test_a_llama_directory_runs_sft_and_rloo_through_the_cli(tmp_path, tokenizer_without_pad):
    path = _model_dir(tmp_path / "llama", "llama", tokenizer_without_pad)
    args = [f"model.name_or_path={path}", "task.num_sft_examples=200", "sft.epochs=1", "algo=rloo", "reward=rule",
            "reward.function=rlhf_lab.rewards.rules:word_count", "algo.total_episodes=32", "algo.rollout_batch_size=16",
            "eval.samples_per_prompt=1", "trainer.progress_bar=none", "logger=csv",
            f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert "eval/rloo/proxy_reward" in metrics and "eval/rloo/gold_reward" in metrics


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_reward_scores_with_shared_prompts_equal_one_row_per_response(tmp_path, family, tokenizer_without_pad):
    """Rotary positions and grouped-query attention too: a response after a shared prompt, with
    positions restarting after the prompt, scores as prompt + response alone."""
    from rlhf_lab.records import PreferenceRecord
    from rlhf_lab.models.loading import load_value_model
    from rlhf_lab.rewards.base import RewardObjective
    from rlhf_lab.rewards.configs import PairwiseRewardConfig
    from rlhf_lab.rewards.pairwise import PairwiseObjective

    path = _model_dir(tmp_path, family, tokenizer_without_pad)
    tokenizer, model = load_tokenizer(str(path)), load_value_model(str(path)).eval()
    records = [PreferenceRecord(prompt=p, responses=["the river is charming .", "dull .", "a lovely quiet garden ."], ranking=[0, 2, 1])
               for p in PROMPTS]
    grouped = PairwiseObjective(PairwiseRewardConfig()).collate(records, tokenizer, share_prompt=True)
    flat = PairwiseObjective(PairwiseRewardConfig()).collate(records, tokenizer, share_prompt=False)
    # Mistral's sliding window makes the pipeline choose one row per response (any window is refused,
    # however long); without it, its architecture takes the grouped layout like the others.
    model.model.config.sliding_window = None
    with torch.no_grad():
        a, b = RewardObjective.batch_scores(model, grouped), RewardObjective.batch_scores(model, flat)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert a.unique().numel() == a.numel()
