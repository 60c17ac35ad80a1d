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
    # a reward-model ensemble of three: three reward models' weights beside policy and reference
    ensemble = memory.estimate(1000, 1000, "float32", reference=True, reward_model=3, critic=False)
    assert ensemble.parts["reward model weights"] == 12000 and ensemble.weights == 20000


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


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=256, n_embd=48, n_layer=3, n_head=4)).save_pretrained(out)
    return out


def _saved_by_whole_model(model_dir, rows, length, lora=None):
    """Bytes of the distinct non-weight storages the full model's training forward saves (output layer
    read at one position per row), the figure the two-layer probe predicts."""
    import torch

    from rlhf_lab.models.loading import disable_dropout, load_policy
    from rlhf_lab.models.logits import logits_at

    model = load_policy(str(model_dir))
    disable_dropout(model)
    if lora is not None:
        from rlhf_lab.models.lora import add_policy_adapters

        model = add_policy_adapters(model, lora)
    weights = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            seen[s.data_ptr()] = s.nbytes()
        return t

    mask = torch.ones(rows, length, dtype=torch.long)
    mask[1:, length - length // 3:] = 0
    ids = torch.randint(0, 300, (rows, length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits_at(model, {"input_ids": ids, "attention_mask": mask}, torch.arange(rows), torch.full((rows,), length // 2)).sum()
    return sum(seen.values())


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, target_modules=["c_attn"])], ids=["full", "lora"])
def test_the_two_layer_probe_predicts_what_the_whole_model_saves_at_other_lengths(gpt2_dir, lora):
    from rlhf_lab.activation_memory import probe

    profile = probe(str(gpt2_dir), lora=lora)
    assert profile.layers == 3 and profile.vocab == 300 and profile.hidden_bytes == 48 * 4
    for rows, length in ((3, 100), (2, 200)):
        saved = _saved_by_whole_model(gpt2_dir, rows, length, lora)
        # the profile's forward-kept part: layers x per-layer + outside, per position (no logits: read 1 per row)
        predicted = rows * length * (profile.layers * profile.per_token_in_layer(length) + profile.outside)
        assert predicted == pytest.approx(saved, rel=0.03), (rows, length)
    if lora is not None:  # frozen linear layers keep no input for their backward
        assert profile.per_layer < probe(str(gpt2_dir)).per_layer * 0.9


def test_activation_peak_and_cache_by_hand(llama_dir):
    from rlhf_lab.activation_memory import ActivationProfile, probe

    p = ActivationProfile(layers=4, per_layer=1000.0, per_layer_per_position=2.0, outside=100.0, vocab=50, hidden_bytes=64, cache_per_token=8)
    # 2 x 10 positions: (4 + 1) layers (the backward holds one layer's gradients beside the saved) x (1000 + 2 x 10) + 100,
    # plus 3 vocabulary rows of fp32 per position read
    assert p.training(2, 10, read_tokens=5) == 20 * (5 * 1020 + 100) + 3 * 5 * 50 * 4
    # checkpointing: each layer keeps its input; one layer rebuilt at a time, three layers' worth at the peak
    assert p.training(2, 10, checkpointing=True) == 20 * (4 * 64 + 3 * 1020 + 100)
    assert p.training(2, 10, checkpointing=True, on_policy=True) == 20 * (4 * 64 + 1020 + 100)
    assert p.generation(3, 7) == 3 * 7 * 8
    # the Llama fixture: 2 layers, 2 key/value heads of 16 dims, fp32 -> 2 (k and v) x 2 x 2 x 16 x 4 bytes a token
    assert probe(str(llama_dir)).cache_per_token == 2 * 2 * 2 * 16 * 4


def test_stage_peaks_follow_the_batch_sizes_and_the_datas_longest_items(tmp_path, llama_dir):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from rlhf_lab.activation_memory import probe
    from rlhf_lab.config import SamplingConfig, register_engine_schemas
    from rlhf_lab.plugin_manager import get_plugin_manager
    from rlhf_lab.run.peaks import stage_peaks
    from rlhf_lab.run.plan import make_plan
    from rlhf_lab.run.preflight import check_trainer

    get_plugin_manager()
    register_engine_schemas()
    longest = {"prompt": 20, "demonstration": 12, "demonstration sequence": 30}

    def peaks(*overrides):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="rlhf_lab.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"model.name_or_path={llama_dir}", f"cache_dir={tmp_path}", "logger=csv", *overrides])
        plan = make_plan(cfg, get_plugin_manager().registry)
        return {p.stage: p for p in stage_peaks(plan, check_trainer(plan, worker=False), longest, llama_dir)}

    profile, value = probe(str(llama_dir)), probe(str(llama_dir), value=True, share_prompt=True)
    total, _ = memory.count_parameters(str(llama_dir))
    ppo = peaks("sft.batch_size=8", "reward.batch_size=4", "algo.rollout_batch_size=16", "algo.minibatch_size=4", "algo.sampling.max_new_tokens=10")
    assert set(ppo) == {"sft", "reward model", "policy"}
    assert ppo["sft"].parts["activations"] == profile.training(8, 30, read_tokens=8 * 12)
    assert ppo["sft"].parts["weights"] == total * 4 and ppo["sft"].parts["gradients and AdamW state"] == 3 * total * 4
    assert ppo["sft"].parts["training loop"] == memory.TRAINING_LOOP_BYTES == 100 * 2**20
    # reward records are sampled candidates: the prompt once, then 4 responses of up to max_new_tokens
    assert ppo["reward model"].parts["activations"] == value.training(4, 20 + 4 * 10)
    # the policy stage: the larger of the rollout's cache (16 x 30) and an update's activations (policy and critic)
    update = profile.training(4, 30, read_tokens=4 * 10) + probe(str(llama_dir), value=True).training(4, 30)
    assert ppo["policy"].total == memory.estimate(total, total, "float32", reference=True, reward_model=True, critic=True).total + max(
        update, profile.generation(16, 30)) + memory.TRAINING_LOOP_BYTES
    # checkpointed, an update rebuilds one layer's worth at a time (the supervised stages' factor is three)
    checkpointed = peaks("model.gradient_checkpointing=true", "algo.rollout_batch_size=16", "algo.minibatch_size=4", "algo.sampling.max_new_tokens=10")
    assert checkpointed["policy"].parts["update activations"] == profile.training(4, 30, 4 * 10, True, on_policy=True) + probe(str(llama_dir), value=True).training(
        4, 30, 0, True, on_policy=True) < update
    assert checkpointed["sft"].parts["activations"] == profile.training(64, 30, 64 * 12, True)
    dpo = peaks("algo=dpo", "algo.batch_size=6")
    new = SamplingConfig().max_new_tokens  # DPO's candidates are sampled at the default settings
    assert dpo["dpo"].parts["weights"] == 2 * total * 4  # policy and reference
    assert dpo["dpo"].parts["activations"] == profile.training(12, 20 + new, read_tokens=12 * new)
    assert set(peaks("stop_after=sft")) == {"sft"}
    assert peaks("model.gradient_checkpointing=true", "stop_after=sft")["sft"].parts["activations"] == profile.training(64, 30, 64 * 12, True)
