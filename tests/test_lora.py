"""LoRA: the reference is the policy with its adapters off (one copy of the base weights), value-model
adapters merge into a plain model, and whole runs train and save adapters through the CLI."""

from __future__ import annotations


import pytest
import torch

from rlhf_lab.config import LoraSettings
from rlhf_lab.models.loading import load_policy, load_value_model
from rlhf_lab.models.lora import AdapterDisabled, add_policy_adapters, add_value_adapters, merge_value_adapters, merged_copy

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)

LORA = LoraSettings(r=4, alpha=8.0)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

    out = tmp_path_factory.mktemp("toy_base")
    make_toy_task(ToyTaskConfig(num_sft_examples=50), seed=0).build_base_model(out)
    return out


def _perturb_adapters(model, seed: int = 0) -> None:
    """LoRA's B starts at zero (adapters change nothing); give them weights as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


IDS = torch.tensor([[5, 9, 14, 3, 22, 7]])


def test_the_reference_is_the_base_network_with_adapters_off(toy_dir):
    plain = load_policy(str(toy_dir)).eval()
    policy = add_policy_adapters(load_policy(str(toy_dir)), LORA).eval()
    reference = AdapterDisabled(policy)
    _perturb_adapters(policy)
    with torch.no_grad():
        expected = plain(input_ids=IDS).logits
        assert torch.equal(reference(input_ids=IDS).logits, expected)
        assert not torch.allclose(policy(input_ids=IDS).logits, expected, atol=1e-3)  # the adapters do act
    # One copy of the weights: the reference's parameters are the policy's, and only adapters train.
    assert {id(p) for p in reference.parameters()} == {id(p) for p in policy.parameters()}
    assert all(("lora_" in n) == p.requires_grad for n, p in policy.named_parameters())
    reference.eval().requires_grad_(False)  # what algorithms do to a reference: must not freeze the adapters
    assert any(p.requires_grad for p in policy.parameters()) and list(reference.children()) == []


def test_merged_policy_is_a_plain_model_with_the_adapters_effect(toy_dir, tmp_path):
    policy = add_policy_adapters(load_policy(str(toy_dir)), LORA).eval()
    _perturb_adapters(policy)
    merged = merged_copy(policy)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = load_policy(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=IDS).logits, policy(input_ids=IDS).logits, atol=1e-5)
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    assert any("lora_" in n for n, _ in policy.named_parameters())  # the adapter model is left as it was


def test_value_model_adapters_train_the_head_and_merge_into_a_plain_model(toy_dir, tmp_path):
    model = load_value_model(str(toy_dir)).eval()
    add_value_adapters(model, LORA)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    adapters = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert adapters and trainable == adapters | {id(p) for p in model.head.parameters()}
    _perturb_adapters(model)
    mask, positions = torch.ones_like(IDS), torch.arange(IDS.shape[1]).unsqueeze(0)
    with torch.no_grad():
        before = model(IDS, mask, positions)
        merge_value_adapters(model)
        after = model(IDS, mask, positions)
    assert torch.allclose(before, after, atol=1e-5)
    assert not any("lora_" in n for n, _ in model.named_parameters())
    model.save_pretrained(tmp_path / "rm")
    with torch.no_grad():
        assert torch.allclose(load_value_model(str(tmp_path / "rm")).eval()(IDS, mask, positions), after, atol=1e-5)


def test_bad_lora_settings_are_refused():
    with pytest.raises(ValueError, match="model.lora needs r >= 0"):
        LoraSettings(r=-1)
