"""The pre-flight's memory estimate for each trainer on a ladder of model shapes, up to a 0.5B Qwen2,
with and without LoRA and activation checkpointing, against this machine's memory.

Nothing is trained and no weight is built: the parameters are counted on the meta device and the
activations measured on a two-layer copy of each shape (rlhf_lab.activation_memory), as the
pre-flight does. Lengths are HH-like, as in real_lengths.py: prompts up to 468 tokens, responses up to
162 (the 95th percentile of its synthetic demonstrations, what task=dataset would sample), records
cut to 512 positions. benchmarks/real_lengths.py compares these estimates with measured peaks on the
shapes small enough to train here.

    python benchmarks/memory_ladder.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

PROMPT, RESPONSE, RECORD = 468, 162, 512
SHAPES = {
    "gpt2-1m": dict(model_type="gpt2", n_embd=96, n_layer=4, n_head=4, vocab_size=8002, n_positions=1024, bos_token_id=0, eos_token_id=0),
    "gpt2-25m": dict(model_type="gpt2", n_embd=512, n_layer=6, n_head=8, vocab_size=8002, n_positions=1024, bos_token_id=0, eos_token_id=0),
    "gpt2-125m": dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
    "qwen2-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True),
}
"""GPT-2 shapes of real_lengths.py (the 125m one with GPT-2's own vocabulary) and Qwen2-0.5B's published config."""
SETUPS = {"full": dict(lora=None, checkpointing=False), "LoRA r=16": dict(lora=16, checkpointing=False),
          "LoRA + checkpointing": dict(lora=16, checkpointing=True)}
BATCH = {"sft": 64, "reward": 32, "dpo": 64, "ppo": (64, 16)}
"""The engine's default batch sizes: SFT 64 demonstrations, reward model 32 records, DPO 64 pairs, PPO
rollouts of 64 prompts in minibatches of 16."""


def write_config(shape: str, out: Path) -> None:
    from transformers import AutoConfig

    settings = dict(SHAPES[shape])
    AutoConfig.for_model(settings.pop("model_type"), **settings).save_pretrained(out)


def estimates(model_dir: Path, lora_r, checkpointing: bool) -> dict[str, int]:
    from rlhf_lab import memory
    from rlhf_lab.activation_memory import probe
    from rlhf_lab.config import LoraSettings

    lora = LoraSettings(r=lora_r) if lora_r else None
    parameters, trainable = memory.count_parameters(str(model_dir), lora)
    policy = probe(str(model_dir), lora=lora)
    value = probe(str(model_dir), value=True, lora=lora)
    shared_reward = probe(str(model_dir), value=True, share_prompt=True, lora=lora)
    sft = memory.training_peak("sft", parameters, trainable, "float32", policy, rows=BATCH["sft"], length=RECORD,
                               read_tokens=BATCH["sft"] * RESPONSE, checkpointing=checkpointing)
    reward = memory.training_peak("reward", parameters, trainable, "float32", shared_reward, rows=BATCH["reward"],
                                  length=PROMPT + 2 * RESPONSE, read_tokens=0, checkpointing=checkpointing)
    dpo = memory.training_peak("dpo", parameters, trainable, "float32", policy, rows=2 * BATCH["dpo"], length=RECORD,
                               read_tokens=2 * BATCH["dpo"] * RESPONSE, checkpointing=checkpointing, frozen_copies=0 if lora else 1)
    rollout, minibatch = BATCH["ppo"]
    est = memory.estimate(parameters, trainable, "float32", reference=lora is None, reward_model=True, critic=True)
    ppo = memory.policy_stage_peak(est, policy, value, rollout_rows=rollout, rollout_length=PROMPT + RESPONSE, update_rows=minibatch,
                                   update_length=PROMPT + RESPONSE, read_tokens=minibatch * RESPONSE, checkpointing=checkpointing)
    return {"parameters": parameters, "sft": sft.total, "reward": reward.total, "dpo": dpo.total, "ppo": ppo.total}


def main() -> None:
    import argparse

    from rlhf_lab import memory

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    available = memory.device_memory_bytes(__import__("torch").device("cpu"))
    print(f"this machine: {memory.readable(available)}; lengths: prompts {PROMPT}, responses {RESPONSE}, records {RECORD}; "
          f"batches {BATCH} (fp32)\n")
    print(f"{'shape':11s} {'setup':22s} {'params':>8s} {'sft':>10s} {'reward':>10s} {'dpo':>10s} {'ppo':>10s}")
    with tempfile.TemporaryDirectory() as root:
        for shape in SHAPES:
            model_dir = Path(root) / shape
            write_config(shape, model_dir)
            for name, setup in SETUPS.items():
                e = estimates(model_dir, setup["lora"], setup["checkpointing"])
                cells = " ".join(f"{memory.readable(e[k]) + ('*' if e[k] > available else ''):>10s}" for k in ("sft", "reward", "dpo", "ppo"))
                print(f"{shape:11s} {name:22s} {e['parameters'] / 1e6:7.0f}M {cells}", flush=True)
    print("\n* more than this machine's memory")


if __name__ == "__main__":
    main()
