"""The pre-flight's memory estimate for each trainer on a ladder of model shapes, up to a 0.5B Qwen2,
with and without LoRA and activation checkpointing, against this machine's memory.

Nothing is trained and no weight is built: the parameters are counted on the meta device and the
activations measured on a two-layer copy of each shape (rlhf_lab.activation_memory), as the
pre-flight does. Lengths are HH-like, as in real_lengths.py: prompts up to 468 tokens, responses up to
162 (the 95th percentile of its synthetic demonstrations, what task=dataset would sample), records
cut to 512 positions. benchmarks/real_lengths.py compares these estimates with measured peaks on the
GPT-2 shapes.

``--train`` then trains the 0.5B Qwen2 shape here: its weights built locally (random, fp32, the
published config; the synthetic HH-like tokenizer of real_lengths.py, its 8000 tokens inside the
model's 151936), one PPO iteration with LoRA r = 16 and activation checkpointing (rollout of
``--rollout`` prompts of about 200 tokens and 128 new tokens, one epoch of one minibatch; a learned
reward model and critic of the same shape), in a fresh process whose resident memory is measured from
before the first model loads, beside the pre-flight's estimate at that batch.

    python benchmarks/memory_ladder.py
    python benchmarks/memory_ladder.py --train     # also one PPO iteration of the 0.5B shape (about 10 minutes)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
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


TRAIN_PROMPT, TRAIN_NEW_TOKENS = 200, 128
"""--train: prompts of about 200 tokens, responses run to 128 tokens (the untrained model rarely samples EOS)."""


def build_qwen(root: Path) -> None:
    """The 0.5B Qwen2 shape with random fp32 weights, a scalar-head copy as reward model, HH-like prompts."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import real_lengths

    from rlhf_lab.data import encode_prompt
    from rlhf_lab.models.value_model import RewardNormaliser

    data = real_lengths.make_dialogues(300, real_lengths.SEED)
    tokenizer = real_lengths.build_tokenizer(data, root / "tokenizer")
    settings = dict(SHAPES["qwen2-0.5b"])
    config = AutoConfig.for_model(settings.pop("model_type"), **settings, bos_token_id=tokenizer.eos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    reward = AutoModelForSequenceClassification.from_pretrained(root / "policy", num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(root / "reward")
    tokenizer.save_pretrained(root / "reward")
    RewardNormaliser().save(root / "reward")
    near = sorted(data, key=lambda r: abs(len(encode_prompt(tokenizer, r["prompt"])) - TRAIN_PROMPT))
    (root / "prompts.json").write_text(json.dumps([r["prompt"] for r in near[:64]]))


def train_ppo(root: Path, rollout: int) -> dict:
    """One PPO iteration of the 0.5B shape with LoRA r = 16 and checkpointing (worker process)."""
    import lightning  # noqa: F401  (libraries load before the baseline: they are not the stage's memory)
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from real_lengths import PeakRSS, _trainer

    from rlhf_lab import memory
    from rlhf_lab.activation_memory import probe
    from rlhf_lab.algos.inputs import AlgoInputs
    from rlhf_lab.algos.ppo import PPOModule
    from rlhf_lab.algos.ppo_config import PPOConfig
    from rlhf_lab.config import LoraSettings, SamplingConfig
    from rlhf_lab.models.loading import load_policy, load_tokenizer, load_value_model
    from rlhf_lab.models.lora import AdapterDisabled, add_policy_adapters
    from rlhf_lab.models.value_model import RewardNormaliser
    from rlhf_lab.rewards.function import LearnedReward

    torch.manual_seed(0)
    lora, policy_dir = LoraSettings(r=16), str(root / "policy")
    config = PPOConfig(lr=1e-5, rollout_batch_size=rollout, minibatch_size=rollout, ppo_epochs=1, total_episodes=rollout,
                       missing_eos_penalty=None, sampling=SamplingConfig(max_new_tokens=TRAIN_NEW_TOKENS))
    shapes = []
    with PeakRSS() as peak:
        trainable = add_policy_adapters(load_policy(policy_dir), lora)
        reward = LearnedReward(load_value_model(str(root / "reward")), RewardNormaliser.load(root / "reward"))
        inputs = AlgoInputs(sft=Path(policy_dir), reference=AdapterDisabled(trainable), tokenizer=load_tokenizer(policy_dir),
                            prompts=json.loads((root / "prompts.json").read_text()), seed=0, reward=reward, policy=trainable,
                            lora=lora, gradient_checkpointing=True)
        module = PPOModule(config, inputs)
        iteration = module.iteration

        def recorded(exp):
            shapes.append((*exp.response_mask.shape, int(exp.batch["prompt_len"]), int(exp.response_mask.sum())))
            return iteration(exp)

        module.iteration = recorded
        start = time.perf_counter()
        _trainer(1, lightning.pytorch.Callback(), "32-true").fit(module)
        seconds = time.perf_counter() - start
    rows, new, prompt, read = shapes[0]
    length = prompt + new
    parameters, adapters = memory.count_parameters(policy_dir, lora)
    est = memory.estimate(parameters, adapters, "float32", reference=False, reward_model=True, critic=True)
    stage = memory.policy_stage_peak(est, probe(policy_dir, lora=lora), probe(policy_dir, value=True, lora=lora), rollout_rows=rows,
                                     rollout_length=length, update_rows=rows, update_length=length, read_tokens=read, checkpointing=True)
    return {"seconds": seconds, "peak_mb": peak.mb, "estimate_mb": stage.total / 2**20, "rows": rows, "length": length,
            "parameters": parameters, "adapters": adapters, "parts": {k: v / 2**20 for k, v in stage.parts.items()}}


def main() -> None:
    import argparse

    from rlhf_lab import memory

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="also train one PPO iteration of the 0.5B shape (LoRA + checkpointing)")
    parser.add_argument("--rollout", type=int, default=8, help="--train: prompts in the rollout (and the one minibatch)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        print("RESULT " + json.dumps(train_ppo(Path(args.worker), args.rollout)), flush=True)
        return
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
    if args.train:
        with tempfile.TemporaryDirectory(prefix="rlhf_lab_qwen_") as root:
            build_qwen(Path(root))
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", root, "--rollout", str(args.rollout)],
                                  capture_output=True, text=True, env=env)
        results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not results:
            print(f"\nqwen2-0.5b PPO failed: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
            return
        r = results[0]
        print(f"\nqwen2-0.5b PPO, LoRA r=16 + checkpointing, one iteration: rollout {r['rows']} x {r['length']} tokens, "
              f"{r['parameters'] / 1e6:.0f}M parameters ({r['adapters'] / 1e6:.2f}M in adapters), {r['seconds']:.0f} s; "
              f"peak {r['peak_mb']:.0f} MB, estimate {r['estimate_mb']:.0f} MB "
              f"({', '.join(f'{k} {v:.0f}' for k, v in r['parts'].items())})")


if __name__ == "__main__":
    main()
