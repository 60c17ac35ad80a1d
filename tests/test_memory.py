"""The memory estimate: counted on the meta device, checked by hand, and a run refused before any work."""

from __future__ import annotations

import pytest

from rlhf_lab import memory
from rlhf_lab.config import LoraSettings


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_lab.models.loading import load_tokenizer
    from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

    toy, out = tmp_path_factory.mktemp("toy"), tmp_path_factory.mktemp("llama")
    make_toy_task(ToyTaskConfig(num_sft_examples=50), seed=0).build_base_model(toy)
    tokenizer = load_tokenizer(str(toy))
    tokenizer.save_pretrained(out)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=len(tokenizer), max_position_embeddings=128, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def test_parameters_are_counted_without_loading_weights(llama_dir):
    from rlhf_lab.models.loading import load_policy

    total, trainable = memory.count_parameters(str(llama_dir))
    assert total == trainable == sum(p.numel() for p in load_policy(str(llama_dir)).parameters())
    # LoRA r=4 on q_proj and v_proj of 2 layers: A (4 x 64) + B (64 x 4) and A (4 x 64) + B (32 x 4) per layer.
    _, adapters = memory.count_parameters(str(llama_dir), LoraSettings(r=4, target_modules=["q_proj", "v_proj"]))
    assert adapters == 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4))


def test_estimate_by_hand():
    est = memory.estimate(1000, 1000, "float32", reference=True, reward_model=True, critic=True)
    # weights: policy, reference, reward model, critic = 4 x 4000 B; training state: (grad + 2 moments) x 2 networks
    assert est.weights == 16000 and est.training_state == 2 * 3 * 4000 and est.total == 40000
    lora = memory.estimate(1000, 10, "bfloat16", reference=False, reward_model=False, critic=False)
    assert lora.total == 1000 * 2 + 3 * 10 * 2
    # trainer.strategy=fsdp over 4 devices: each holds a quarter of every part
    sharded = memory.estimate(1000, 1000, "float32", reference=True, reward_model=True, critic=True, shards=4)
    assert sharded.weights == 4000 and sharded.total == 10000


def test_a_model_too_large_for_the_device_is_refused_before_any_work(tmp_path, monkeypatch, llama_dir):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from rlhf_lab.config import register_engine_schemas
    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.plugin_manager import get_plugin_manager
    from rlhf_lab.run.plan import make_plan
    from rlhf_lab.run.preflight import check_memory, check_trainer

    get_plugin_manager()
    register_engine_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="rlhf_lab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model.name_or_path={llama_dir}", f"cache_dir={tmp_path / 'cache'}", "logger=csv"])
    total, _ = memory.count_parameters(str(llama_dir))
    monkeypatch.setattr(memory, "device_memory_bytes", lambda device: 3 * total * 4)  # less than policy + state + copies
    with pytest.raises(RlhfLabError) as info:
        plan = make_plan(cfg, get_plugin_manager().registry)
        check_memory(plan, check_trainer(plan, worker=False), llama_dir)
    message = str(info.value)
    # policy, reference, reward model, critic weights + (gradient + 2 moments) for policy and critic = 10 copies
    assert message.startswith(f"the policy stage needs at least {memory.gib(10 * total * 4)} GiB")
    assert "model.lora.r=16" in message and "model.dtype=bfloat16" in message
    assert not (tmp_path / "cache" / "sft").exists()
