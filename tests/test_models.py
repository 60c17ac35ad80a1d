"""Model loading and the scalar-head model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rlhf_lab.errors import RlhfLabError
from rlhf_lab.models.loading import load_policy, load_tokenizer, load_value_model
from rlhf_lab.models.value_model import RewardNormaliser
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

from conftest import SUBPROCESS_TIMEOUT


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    make_toy_task(ToyTaskConfig(num_sft_examples=100), seed=0).build_base_model(directory)
    return directory


def test_missing_local_directory_names_the_key():
    with pytest.raises(RlhfLabError, match="model.name_or_path: model directory './nowhere' does not exist"):
        load_policy("./nowhere")


def test_a_file_is_not_a_model_directory(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(RlhfLabError, match="is a file, not a model directory"):
        load_tokenizer(str(tmp_path / "weights.bin"))


@pytest.mark.slow
def test_unreachable_hub_name_is_one_clear_error():
    # A subprocess: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    code = "from rlhf_lab.models.loading import load_tokenizer; load_tokenizer('no-such-org/no-such-model')"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode != 0
    assert "RlhfLabError: model.name_or_path: could not load 'no-such-org/no-such-model'" in result.stderr


def test_sequence_score_is_the_value_at_the_last_real_token(tiny_dir):
    model = load_value_model(str(tiny_dir)).eval()
    ids = torch.tensor([[5, 6, 7, 8], [0, 9, 10, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        values = model(ids, mask, positions)
        scores = model.sequence_scores(ids, mask, positions)
    assert values.shape == (2, 4)
    torch.testing.assert_close(scores, torch.stack([values[0, 3], values[1, 2]]))


def test_reward_model_reloads_with_plain_transformers_and_keeps_its_normaliser(tiny_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = load_value_model(str(tiny_dir))
    model.save_pretrained(tmp_path)
    RewardNormaliser(mean=0.5, std=2.0).save(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.score.weight, model.head.weight)
    normaliser = RewardNormaliser.load(tmp_path)
    torch.testing.assert_close(normaliser(torch.tensor([2.5])), torch.tensor([1.0]))


def test_normaliser_fit_gives_mean_zero_std_one():
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    normaliser = RewardNormaliser.fit(scores)
    normalised = normaliser(scores)
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(normalised.std()) == pytest.approx(1.0, abs=1e-6)


def test_tokenizer_gets_a_pad_token_and_models_load_in_the_requested_dtype(tiny_dir):
    tokenizer = load_tokenizer(str(tiny_dir))
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert next(load_policy(str(tiny_dir), dtype="bfloat16").parameters()).dtype == torch.bfloat16


def test_saved_reward_model_scores_the_same_in_plain_transformers(tiny_dir, tmp_path):
    """Plain transformers pools at the last non-pad token: with the pad id saved, that is our sequence score."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(str(tiny_dir))
    model = load_value_model(str(tiny_dir)).eval()
    model.model.config.pad_token_id = tokenizer.pad_token_id  # as the pipeline does before saving
    model.save_pretrained(tmp_path)
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, pad, pad]])  # right padding: positions agree
    mask = (ids != pad).long()
    with torch.no_grad():
        ours = model.sequence_scores(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
        theirs = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_loaded_models_run_the_fused_gelu_with_the_same_outputs_and_save_the_config_unchanged(tiny_dir, tmp_path):
    """GPT-2's written-out tanh GELU becomes torch's one-kernel version on load: the same function to
    float rounding, logits and gradients included; the saved model still names ``gelu_new``."""
    import json

    from transformers import AutoModelForCausalLM
    from transformers.activations import NewGELUActivation

    stock = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    ours = load_policy(str(tiny_dir))
    assert any(isinstance(m, NewGELUActivation) for m in stock.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in ours.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in load_value_model(str(tiny_dir)).modules())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    for model in (stock, ours):
        model.eval().zero_grad()
        model(input_ids=ids).logits.pow(2).mean().backward()
    torch.testing.assert_close(ours(input_ids=ids).logits, stock(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    for (name, a), (_, b) in zip(ours.named_parameters(), stock.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu_new"
