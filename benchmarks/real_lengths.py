"""rlhf_lab's trainers where users live: HH-like lengths and a ladder of model shapes.

The toy task's figures (trl_comparison.py) measure overhead on ten-token sequences. This script
measures the work per real token at the lengths of Anthropic's HH-RLHF dialogues, on models built
here (nothing is downloaded):

- **Data**: a synthetic corpus shaped like HH-RLHF's harmless-base split: dialogues of 1-4 turns,
  prompts of about 100-500 tokens (median ~250), responses of about 20-250 (median ~70), words drawn
  from a Zipf vocabulary of made-up words, so the lengths are real and the content is not. A
  byte-level BPE tokenizer (8000 tokens) is trained on it.
- **Shapes** (GPT-2 blocks with this vocabulary): ``1m`` 4 x 96, ``25m`` 6 x 512, ``125m`` 12 x 768
  (GPT-2 small's blocks; 92M parameters with this vocabulary).
- **Trainers**: ``sft``, ``reward`` (pairwise, shared prompts), ``dpo``, each for a few optimiser
  steps through the same Lightning module the pipeline trains; ``rollout``: GRPO-style sampling of
  k = 8 responses to each of 8 prompts of ~300 tokens, the engine as it is against the engine before
  it (every sample prefilled its prompt, ended rows stayed in the batch); ``grpo``, ``rloo``: whole
  steps of k = 8 samples of 8 prompts, a word-count rule as reward; ``ppo``: whole iterations of 16
  prompts, a reward model of the policy's shape, 4 epochs x 2 minibatches. On-policy steps are all
  timed (a rollout dwarfs the first step's allocation); the others after one warm-up step.
  The untrained models end a response with probability 1/80 a token (planted in the final layer
  norm's bias), so rollouts end at realistic, varied lengths.

Printed per (shape, trainer): seconds per step, samples/s, real tokens/s, the useful GFLOP/s (6 x
block parameters x real tokens + causal attention + the output layer where a loss reads it) as a
share of this machine's measured matmul peak in the precision the trainers run in (both peaks are
printed; a CPU without bf16 instructions runs bf16 a hundred times slower than fp32), and the peak growth of resident memory
from before the first model loads beside the pre-flight's estimate of the stage's peak (rlhf_lab.memory:
weights, gradients and AdamW state, activations measured per token on a two-layer copy of the model, at
the largest batch the run trained on; for rollouts the key/value cache as if every row ran to
max_new_tokens). Each (shape, trainer) runs in a fresh process. Nothing is asserted. ``--positions``
repeats the table with records cut to other lengths, and ``--json`` keeps every row for
real_lengths_plot.py (time per sample against model size and sequence length).

    python benchmarks/real_lengths.py                                # 1m and 25m, every trainer
    python benchmarks/real_lengths.py --shapes 125m --what sft,dpo --steps 3
    python benchmarks/real_lengths.py --shapes 1m --what sft --variants   # SFT with each speed option off in turn
    python benchmarks/real_lengths.py --shapes 1m,25m --what sft,reward,dpo --trl   # beside TRL's best CPU configuration
    python benchmarks/real_lengths.py --shapes 1m --what grpo,rloo,ppo --trl --trl-python .venv-trl112/bin/python
    python benchmarks/real_lengths.py --shapes 1m,25m,125m --what sft --positions 128,256,512 --trl fastest --json sft.json
    python benchmarks/real_lengths.py --shapes 125m --what grpo --steps 1 --trl --ckpt          # both sides checkpointed
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHAPES = {"1m": (4, 96, 4), "25m": (6, 512, 8), "125m": (12, 768, 12)}
"""name -> (layers, width, heads) of a GPT-2 (1024 positions, as GPT-2's)."""
WHAT = ("sft", "reward", "dpo", "rollout", "grpo", "rloo", "ppo")
ON_POLICY = ("grpo", "rloo", "ppo")
BATCH = {"sft": 32, "reward": 16, "dpo": 16, "rollout": 8, "grpo": 8, "rloo": 8, "ppo": 16}
"""Demonstrations, preference records or pairs per step; prompts per rollout (rollout, grpo, rloo, ppo)."""
PPO_MINIBATCH, PPO_EPOCHS = 8, 4
"""PPO: each rollout of 16 responses is 4 epochs x 2 minibatches of policy and critic updates."""
LENGTH_TARGET = 50
"""GRPO and RLOO reward: ``-|words - 50|`` (rlhf_lab.rewards.rules.word_count), the same on both sides."""
SAMPLES_PER_PROMPT, MAX_NEW_TOKENS, STOP_PROBABILITY = 8, 256, 1 / 80
TRAIN_POSITIONS, POSITIONS, VOCAB, SEED = 512, 1024, 8000, 0
"""Training records are cut to 512 tokens (prompts from the left), as a user with a 512-position model
would (``data.truncate=true``); rollouts of 300-token prompts and 256 new tokens need more."""
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


# --- data and models (parent process) -------------------------------------------------------------------


def _words(rng: random.Random, vocabulary: list[str], weights: list[float], n: int) -> str:
    return " ".join(rng.choices(vocabulary, weights, k=n))


def make_dialogues(n: int, seed: int) -> list[dict]:
    """HH-shaped records: ``prompt`` (the dialogue up to the last "Assistant:"), ``chosen`` and ``rejected``."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = sorted({"".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(6000)})
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf
    records = []
    for _ in range(n):
        turns = rng.choice([1, 1, 2, 2, 3, 4])
        budget = int(rng.lognormvariate(math.log(330), 0.5))  # words before the last answer
        parts = []
        for turn in range(turns):
            share = max(4, budget // turns)
            parts.append(f"\n\nHuman: {_words(rng, vocabulary, weights, max(3, share // 3))}")
            if turn < turns - 1:
                parts.append(f"\n\nAssistant: {_words(rng, vocabulary, weights, share - share // 3)}")
        prompt = "".join(parts) + "\n\nAssistant:"
        answers = [_words(rng, vocabulary, weights, min(200, max(3, int(rng.lognormvariate(math.log(55), 0.6))))) for _ in range(2)]
        records.append({"prompt": prompt, "chosen": answers[0], "rejected": answers[1]})
    return records


def build_tokenizer(records: list[dict], out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<eos>", "<pad>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([r["prompt"] + " " + r["chosen"] for r in records], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>", pad_token="<pad>")
    tokenizer.save_pretrained(out)
    return tokenizer


def build_model(shape: str, tokenizer, out: Path) -> None:
    """A fresh GPT-2 of ``shape`` whose responses end with probability ``STOP_PROBABILITY`` a token.

    Its logits are nearly uniform; the final layer norm's bias gets a direction that the EOS row of
    the (tied) output layer reads, raising EOS's logit by ``log(p (V - 1) / (1 - p))``; a short EOS row
    keeps the hidden state's own noise on that logit small (std 0.5)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    layers, width, heads = SHAPES[shape]
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=POSITIONS, n_embd=width, n_layer=layers, n_head=heads,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    boost = math.log(STOP_PROBABILITY * (len(tokenizer) - 1) / (1 - STOP_PROBABILITY))
    with torch.no_grad():
        direction = torch.randn(width)
        direction /= direction.norm()
        model.transformer.ln_f.bias.copy_(direction * boost / 0.5)
        model.transformer.wte.weight[tokenizer.eos_token_id] = direction * 0.5
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # PPO's reward model (TRL's PPOTrainer takes only a model): this backbone with a fresh scalar head. Its
    # scores are meaningless, which does not change the cost of computing them.
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.models.value_model import RewardNormaliser

    reward_dir = out.parent / f"{out.name}_reward"
    reward = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)
    RewardNormaliser().save(reward_dir)


def prepare(root: Path, shapes: list[str], records: int, positions: int = TRAIN_POSITIONS) -> dict:
    """Data, tokenizer and models under ``root``, every record cut to ``positions`` tokens."""
    from rlhf_lab.records import PreferenceRecord, write_jsonl

    data = make_dialogues(records, SEED)
    tokenizer = build_tokenizer(data, root / "tokenizer")

    def tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    for record in data:
        for key in ("chosen", "rejected"):  # at most half the positions (none is cut at 512)
            words = record[key].split(" ")
            while len(words) > 1 and tokens(" " + " ".join(words)) + 1 > positions // 2:
                words = words[: len(words) * 9 // 10]
            record[key] = " ".join(words)
        # the prompt cut from the left until prompt + the longer response fit the positions
        response = max(tokens(" " + record[k]) + 1 for k in ("chosen", "rejected"))
        words = record["prompt"].split(" ")
        while tokens(" ".join(words)) + response > positions:
            words = words[10:]
        record["prompt"] = " ".join(words)
    for shape in shapes:
        build_model(shape, tokenizer, root / shape)
    (root / "prefs").mkdir()
    prefs = [PreferenceRecord(prompt=r["prompt"], responses=[r["chosen"], r["rejected"]], ranking=[0, 1]) for r in data]
    write_jsonl(prefs[:-8], root / "prefs" / "train.jsonl")
    write_jsonl(prefs[-8:], root / "prefs" / "heldout.jsonl")
    (root / "data.json").write_text(json.dumps(data))
    prompt_tokens = sorted(len(tokenizer(r["prompt"])["input_ids"]) for r in data)
    response_tokens = sorted(len(tokenizer(" " + r["chosen"])["input_ids"]) + 1 for r in data)
    return {"prompt_tokens": _quantiles(prompt_tokens), "response_tokens": _quantiles(response_tokens)}


def _quantiles(values: list[int]) -> str:
    q = statistics.quantiles(values, n=10)
    return f"min {values[0]}, median {statistics.median(values):.0f}, p90 {q[-1]:.0f}, max {values[-1]}"


# --- one measurement (worker process) -------------------------------------------------------------------


class PeakRSS:
    """Peak growth of resident memory while the block runs (polled in a thread)."""

    def __enter__(self):
        import psutil

        self._process = psutil.Process()
        self._start = self._peak = self._process.memory_info().rss
        self._done = threading.Event()

        def poll():
            while not self._done.wait(0.005):
                self._peak = max(self._peak, self._process.memory_info().rss)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.mb = (self._peak - self._start) / 2**20


class StepTimer:
    """A Lightning callback: wall time and real tokens of each training step (after the first when
    ``skip_first``)."""

    def __init__(self, tokens_of, skip_first: bool = True) -> None:
        import torch
        from lightning.pytorch import Callback

        timer = self

        class _Callback(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                timer._start = time.perf_counter()
                if isinstance(batch, dict) and "prompt_ids" in batch:
                    timer.prompt_length = max(timer.prompt_length, batch["prompt_ids"].shape[1])
                if isinstance(batch, dict) and "input_ids" in batch:
                    rows, length = batch["input_ids"].shape
                    read = int(batch["targets"].numel()) if batch["targets"].dim() == 1 and batch["targets"].dtype == torch.long else 0
                    timer.largest = max(timer.largest, (rows * length, rows, length, read))

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if batch_idx > 0 or not skip_first:  # the first step pays for allocation and kernel selection
                    timer.seconds.append(time.perf_counter() - timer._start)
                    timer.tokens.append(tokens_of(batch))

        self.callback, self.seconds, self.tokens = _Callback(), [], []
        self.largest, self.prompt_length = (0, 0, 0, 0), 0
        """(positions, rows, length, logits read) of the largest batch trained on, for the memory estimate."""


def _trainer(steps: int, callback, precision: str):
    from lightning.pytorch import Trainer

    return Trainer(accelerator="cpu", devices=1, precision=precision, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                   max_steps=steps, max_epochs=1000, callbacks=[callback])


def _inputs(root: Path, shape: str, **extra):
    from rlhf_lab.algos.inputs import AlgoInputs
    from rlhf_lab.models.loading import load_policy, load_tokenizer

    data = json.loads((root / "data.json").read_text())
    return AlgoInputs(sft=root / shape, reference=load_policy(str(root / shape)).eval().requires_grad_(False),
                      tokenizer=load_tokenizer(str(root / shape)), prompts=[r["prompt"] for r in data], seed=SEED, **extra)


def _real_tokens(batch) -> tuple[int, int]:
    """(real tokens, tokens whose logits a loss reads) of a training batch."""
    return int(batch["attention_mask"].sum()), int(batch["targets"].numel())


def measure(root: Path, shape: str, what: str, steps: int, variant: dict, precision: str) -> dict:
    """One (shape, trainer) run; resident memory is measured from before the first model is loaded, so
    its peak is comparable with the pre-flight estimate of the whole stage."""
    import lightning  # noqa: F401  (libraries load before the baseline: they are not the stage's memory)
    import torch
    import transformers  # noqa: F401

    import rlhf_lab.algos.dpo  # noqa: F401
    import rlhf_lab.algos.policy_gradient  # noqa: F401
    import rlhf_lab.stages.reward  # noqa: F401
    import rlhf_lab.stages.sft  # noqa: F401

    torch.manual_seed(SEED)
    if variant.get("side") == "trl":
        import trl  # noqa: F401

        with PeakRSS() as memory:
            result = measure_trl(root, shape, what, steps, variant)
        return {**result, "peak_mb": memory.mb}
    with PeakRSS() as memory:
        result = (measure_rollout if what == "rollout" else measure_training)(root, shape, what, steps, variant, precision)
    return {**result, "peak_mb": memory.mb}


def measure_trl(root: Path, shape: str, what: str, steps: int, variant: dict) -> dict:
    """The same trainer through TRL in its best CPU configuration (real_lengths_trl.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import real_lengths_trl

    trainer, timer = real_lengths_trl.trainer(root, shape, what, steps, BATCH[what], variant)
    trainer.train()
    seconds = statistics.median(timer["seconds"])
    samples = BATCH[what] * (SAMPLES_PER_PROMPT if what in ("grpo", "rloo") else 1)
    return {"seconds": seconds, "samples_per_s": samples / seconds, "tokens_per_s": None, "gflops": None, "estimate_mb": None}


def measure_training(root: Path, shape: str, what: str, steps: int, variant: dict, precision: str) -> dict:
    from rlhf_lab.models.loading import disable_dropout, load_policy, load_tokenizer

    tokenizer = load_tokenizer(str(root / shape))
    data = json.loads((root / "data.json").read_text())
    batch = BATCH[what]
    if what == "sft":
        from rlhf_lab.stages.sft import SFTModule, demonstration_loader, tokenize_demonstrations

        examples = tokenize_demonstrations(tokenizer, [(r["prompt"], r["chosen"]) for r in data])
        loader = demonstration_loader(examples, tokenizer.pad_token_id, batch, True, SEED, group_by_length=variant.get("group_by_length", True))
        model = load_policy(str(root / shape))
        if variant.get("disable_dropout", True):
            disable_dropout(model)
        _checkpointing(model, variant)
        module, tokens_of = SFTModule(model, lr=1e-4, weight_decay=0.0, train_loader=loader), _real_tokens
    elif what == "dpo":
        from rlhf_lab.algos.dpo import DPOModule
        from rlhf_lab.algos.dpo_config import DPOConfig

        config = DPOConfig(beta=0.1, lr=1e-5, batch_size=batch, group_by_length=variant.get("group_by_length", True))
        module, tokens_of = DPOModule(config, _inputs(root, shape, preferences=root / "prefs")), _real_tokens
        _checkpointing(module.policy, variant)
    elif what == "reward":
        from rlhf_lab.models.loading import load_value_model
        from rlhf_lab.records import read_jsonl
        from rlhf_lab.rewards.configs import PairwiseRewardConfig
        from rlhf_lab.rewards.pairwise import PairwiseObjective
        from rlhf_lab.stages.reward import RewardModule, record_loader

        objective = PairwiseObjective(PairwiseRewardConfig())
        model = load_value_model(str(root / shape))
        disable_dropout(model)
        _checkpointing(model.model, variant)
        loader = record_loader(read_jsonl(root / "prefs" / "train.jsonl"), objective, tokenizer, batch, True, SEED, True)
        module = RewardModule(model, objective, lr=1e-5, weight_decay=0.0, train_loader=loader)
        tokens_of = lambda b: (int((b["segment_ids"] >= 0).sum()), 0)  # noqa: E731
    elif what in ON_POLICY:
        module = _on_policy_module(root, shape, what, steps, variant)
        _checkpointing(module.policy, variant)
        tokens_of = lambda b: (0, 0)  # noqa: E731  (a rollout's tokens are counted by the module; figures per sample)
        iteration, rollouts = module.iteration, []

        def recorded(exp):  # the rollouts' shapes, for the memory estimate
            rollouts.append((*exp.response_mask.shape, int(exp.response_mask.sum())))
            return iteration(exp)

        module.iteration = recorded
    else:
        raise ValueError(what)
    # An on-policy step is a whole rollout: its first step's allocation and kernel selection are lost in
    # it, so every step is timed (steps in all); the other trainers get one untimed warm-up step.
    on_policy = what in ON_POLICY
    timer = StepTimer(tokens_of, skip_first=not on_policy)
    _trainer(steps if on_policy else steps + 1, timer.callback, precision).fit(module)
    seconds = statistics.median(timer.seconds)
    samples = batch * (SAMPLES_PER_PROMPT if what in ("grpo", "rloo") else 1)
    real, read = (sum(t[0] for t in timer.tokens) / len(timer.tokens), sum(t[1] for t in timer.tokens) / len(timer.tokens))
    return {"seconds": seconds, "samples_per_s": samples / seconds, "tokens_per_s": real / seconds if real else None, "largest": timer.largest,
            "gflops": useful_flops(root / shape, real, read, what) / seconds / 1e9 if real else None,
            **_estimate(root, shape, what, _largest_rollout(timer, rollouts) if on_policy else timer.largest,
                        bool(variant.get("gradient_checkpointing")))}


def _estimate(*args) -> dict:
    mb, parts = estimate_mb(*args)
    return {"estimate_mb": mb, "estimate_parts": parts}


def _on_policy_module(root: Path, shape: str, what: str, steps: int, variant: dict):
    """GRPO or RLOO (k = 8 samples of each of 8 prompts, a word-count rule as reward, one gradient step
    per rollout) or PPO (16 prompts, a learned reward model of the policy's shape, 4 epochs x 2
    minibatches); KL 0.05 to the reference, responses of up to 256 tokens."""
    from rlhf_lab.config import SamplingConfig

    batch, sampling = BATCH[what], SamplingConfig(max_new_tokens=MAX_NEW_TOKENS)
    grouped = variant.get("group_by_length", True)
    if what == "ppo":
        from rlhf_lab.algos.ppo import PPOModule
        from rlhf_lab.algos.ppo_config import PPOConfig
        from rlhf_lab.models.loading import load_value_model
        from rlhf_lab.models.value_model import RewardNormaliser
        from rlhf_lab.rewards.function import LearnedReward

        config = PPOConfig(lr=1e-5, kl_coef=0.05, rollout_batch_size=batch, minibatch_size=PPO_MINIBATCH, ppo_epochs=PPO_EPOCHS,
                           total_episodes=steps * batch, missing_eos_penalty=None, sampling=sampling, group_by_length=grouped)
        reward_dir = root / f"{shape}_reward"
        reward = LearnedReward(load_value_model(str(reward_dir)), RewardNormaliser.load(reward_dir))
        return PPOModule(config, _inputs(root, shape, reward=reward))
    from rlhf_lab.algos.policy_gradient import PolicyGradientModule
    from rlhf_lab.algos.policy_gradient_config import GRPOConfig, RLOOConfig
    from rlhf_lab.rewards.function import RuleReward
    from rlhf_lab.rewards.rules import word_count

    inputs = _inputs(root, shape)
    inputs.reward = RuleReward(word_count, inputs.tokenizer, {"target": LENGTH_TARGET})
    config = {"grpo": GRPOConfig, "rloo": RLOOConfig}[what](
        lr=1e-5, kl_coef=0.05, rollout_batch_size=batch, samples_per_prompt=SAMPLES_PER_PROMPT, minibatch_size=batch * SAMPLES_PER_PROMPT,
        total_episodes=steps * batch, missing_eos_penalty=None, sampling=sampling, group_by_length=grouped)
    return PolicyGradientModule(config, inputs)


def _checkpointing(model, variant: dict) -> None:
    if variant.get("gradient_checkpointing"):
        from rlhf_lab.models.lora import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)


def _largest_rollout(timer, rollouts: list[tuple[int, int, int]]) -> tuple[int, int, int, int]:
    """(positions, rows, prompt + response length, response tokens) of the largest rollout."""
    prompt = timer.prompt_length
    return max((rows * (prompt + new), rows, prompt + new, read) for rows, new, read in rollouts)


def measure_rollout(root: Path, shape: str, what: str, steps: int, variant: dict, precision: str) -> dict:
    """k samples of each of ``BATCH['rollout']`` prompts of about 300 tokens: the engine, or the one before it."""
    import torch

    from rlhf_lab.data import encode_prompt, pad_left
    from rlhf_lab.models.loading import load_policy, load_tokenizer
    from rlhf_lab.rollout import generate

    tokenizer = load_tokenizer(str(root / shape))
    data = json.loads((root / "data.json").read_text())
    model = load_policy(str(root / shape)).eval()
    near_300 = sorted(data, key=lambda r: abs(len(encode_prompt(tokenizer, r["prompt"])) - 300))[: BATCH["rollout"]]
    ids, mask = pad_left([encode_prompt(tokenizer, r["prompt"]) for r in near_300], tokenizer.pad_token_id)
    k, before = SAMPLES_PER_PROMPT, variant.get("engine") == "before"
    if before:  # every sample prefills its own copy of the prompt; ended rows stay until all have ended
        ids, mask = ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    runs = []
    for repeat in range(3):
        generator = torch.Generator().manual_seed(repeat)
        start = time.perf_counter()
        gen = generate(model, ids, mask, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       max_new_tokens=MAX_NEW_TOKENS, generator=generator, samples_per_prompt=1 if before else k,
                       drop_finished=not before)
        runs.append((time.perf_counter() - start, int(gen.response_mask.sum())))
    seconds, tokens = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    rows, length = BATCH["rollout"] * k, ids.shape[1] + MAX_NEW_TOKENS
    return {"seconds": seconds, "samples_per_s": BATCH["rollout"] * k / seconds, "tokens_per_s": tokens / seconds,
            "gflops": None, **_estimate(root, shape, what, (rows * length, rows, length, 0))}


def useful_flops(model_dir: Path, real_tokens: float, read_tokens: float, what: str) -> float:
    """FLOPs of one training step's useful work: 6 x block parameters x real tokens, causal attention
    at the data's mean length, the output layer at the tokens a loss reads (forward and backward)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    d, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
    block = 12 * d * d * layers
    mean_length = 350  # prompt + response of a typical record here; attention is a small term at these widths
    attention = 6 * layers * d * mean_length * real_tokens  # QK^T and AV, causal half, x3 for the backward
    # DPO: the reference's log-probs were computed once before training, so a step is the policy's work alone.
    head = 6 * d * vocab * read_tokens if what in ("sft", "dpo") else 0
    return 6 * block * real_tokens + attention + head


def matmul_peak(dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """Measured GFLOP/s of a square matmul in ``dtype`` on this machine's threads, for about ``seconds``
    (a CPU without bf16 instructions runs bf16 matmuls a hundred times slower than fp32)."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - start) / 1e9


def estimate_mb(root: Path, shape: str, what: str, largest: tuple[int, int, int, int], checkpointing: bool = False) -> tuple[float, str]:
    """The pre-flight estimate (rlhf_lab.memory) of the stage's peak at the largest batch it ran:
    weights, gradients and AdamW state, and the activations (or for rollouts the key/value cache);
    in MB, and by part."""
    from rlhf_lab import memory
    from rlhf_lab.activation_memory import probe

    _, rows, length, read = largest
    model_dir = str(root / shape)
    parameters, trainable = memory.count_parameters(model_dir)
    profile = probe(model_dir, value=what == "reward", share_prompt=what == "reward")  # the policy's, on-policy
    if what == "rollout":
        cache = profile.generation(rows, length)
        return (parameters * 4 + cache) / 2**20, f"weights {parameters * 4 / 2**20:.0f} MB, cache {cache / 2**20:.0f} MB"
    if what in ON_POLICY:
        ppo = what == "ppo"
        est = memory.estimate(parameters, trainable, "float32", reference=True, reward_model=ppo, critic=ppo)
        critic = probe(model_dir, value=True) if ppo else None
        update_rows = min(rows, PPO_MINIBATCH) if ppo else rows  # an update trains one minibatch
        peak = memory.policy_stage_peak(est, profile, critic, rollout_rows=rows, rollout_length=length, update_rows=update_rows,
                                        update_length=length, read_tokens=read * update_rows // rows, checkpointing=checkpointing)
    else:
        peak = memory.training_peak(what, parameters, trainable, "float32", profile, rows=rows, length=length, read_tokens=read,
                                    checkpointing=checkpointing, frozen_copies=1 if what == "dpo" else 0)
    return peak.total / 2**20, peak.describe()


# --- the table ------------------------------------------------------------------------------------------


def _parameters(model_dir: Path) -> int:
    from rlhf_lab.memory import count_parameters

    return count_parameters(str(model_dir))[0]


def run_worker(root: str, shape: str, what: str, steps: int, variant: dict, precision: str, python: str = sys.executable) -> dict:
    command = [python, os.path.abspath(__file__), "--worker", json.dumps([shape, what, steps, variant, precision]), "--root", root]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **OFFLINE})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"failed": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}"}


def variants(what: str, all_variants: bool, trl: bool, ckpt: bool = False) -> list[tuple[str, dict]]:
    if what == "rollout":
        return [("engine", {}), ("engine before", {"engine": "before"})]
    rows = [("defaults", {})]
    if all_variants and what in ("sft", "dpo", "grpo"):
        rows += [("group_by_length=false", {"group_by_length": False})]
        rows += [("disable_dropout=false", {"disable_dropout": False})] if what == "sft" else []
    if ckpt:  # checkpointing alone, on both sides: GRPO's and RLOO's 64-row updates of 125m need it in 23 GB
        return [("ckpt", {"gradient_checkpointing": True})] + ([("TRL ckpt", {"side": "trl"})] if trl else [])
    if trl == "fastest" and what != "rollout":  # TRL's fastest configuration alone
        return rows + [("TRL no ckpt", {"side": "trl", "gradient_checkpointing": False})]
    if trl and what in ("sft", "reward", "dpo"):
        rows += [("ckpt", {"gradient_checkpointing": True}), ("TRL ckpt", {"side": "trl"}),
                 ("TRL no ckpt", {"side": "trl", "gradient_checkpointing": False})]
        rows += [("TRL padding_free", {"side": "trl", "padding_free": True})] if what in ("sft", "dpo") and trl == "all" else []
    if trl and what in ON_POLICY:  # a rollout dominates the step: checkpointing off on both sides (TRL's fastest)
        rows += [("TRL no ckpt", {"side": "trl", "gradient_checkpointing": False})]
        if what in ("grpo", "rloo") and trl == "all":
            rows += [("TRL continuous batching", {"side": "trl", "gradient_checkpointing": False, "continuous_batching": True})]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1m,25m", help=f"comma-separated subset of {','.join(SHAPES)}")
    parser.add_argument("--what", default=",".join(WHAT), help=f"comma-separated subset of {','.join(WHAT)}")
    parser.add_argument("--steps", type=int, default=4, help="timed optimiser steps per run (after one warm-up step)")
    parser.add_argument("--records", type=int, default=600, help="synthetic HH-like records")
    parser.add_argument("--positions", default=str(TRAIN_POSITIONS),
                        help="comma-separated lengths the records are cut to (prompt from the left, responses to half), one table each")
    parser.add_argument("--precision", default="32-true", help="Lightning precision of the training runs (32-true, bf16-mixed)")
    parser.add_argument("--variants", action="store_true", help="also run SFT, DPO and GRPO with each speed option off in turn")
    parser.add_argument("--trl", nargs="?", const="all", choices=("all", "padded", "fastest"),
                        help="also run every trainer but the bare rollout through TRL in its best CPU configuration (needs the bench extra); "
                             "'padded' leaves out TRL's padding-free variant, whose attention spans each packed row, and its "
                             "continuous-batching generation; 'fastest' runs only TRL's fastest configuration (no checkpointing)")
    parser.add_argument("--trl-python", default=sys.executable,
                        help="Python of an environment with trl==1.12.0 (and rlhf_lab) for TRL's PPO side: later TRL has no PPOTrainer")
    parser.add_argument("--ckpt", action="store_true",
                        help="every trainer with activation checkpointing only, on both sides (GRPO's and RLOO's 64-row update at 125m needs ~36 GB without it)")
    parser.add_argument("--json", help="also write every row's figures to this file (for benchmarks/real_lengths_plot.py)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    if args.worker:
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        shape, what, steps, variant, precision = json.loads(args.worker)
        print("RESULT " + json.dumps(measure(Path(args.root), shape, what, steps, variant, precision)), flush=True)
        return
    import torch

    shapes, whats = args.shapes.split(","), args.what.split(",")
    for name, known, given in (("--shapes", SHAPES, shapes), ("--what", WHAT, whats)):
        if set(given) - set(known):
            parser.error(f"{name}: unknown {', '.join(sorted(set(given) - set(known)))}; choose from {','.join(known)}")
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    peak = peak16 if "bf16" in args.precision else peak32  # %peak: of the precision the trainers run in
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} precision={args.precision} steps={args.steps} "
          f"batch={ {w: BATCH[w] for w in whats} } k={SAMPLES_PER_PROMPT} max_new_tokens={MAX_NEW_TOKENS} "
          f"cpu={torch.backends.cpu.get_cpu_capability()}")
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlhf_lab_real_lengths_") as tmp:
        for positions in [int(p) for p in args.positions.split(",")]:
            root = Path(tmp) / str(positions)
            root.mkdir()
            lengths = prepare(root, shapes, args.records, positions)
            print(f"\nrecords cut to {positions} positions; prompt tokens: {lengths['prompt_tokens']}; "
                  f"response tokens: {lengths['response_tokens']}\n", flush=True)
            print(f"{'shape':6s} {'trainer':8s} {'variant':22s} {'s/step':>8s} {'samples/s':>10s} {'tokens/s':>9s} "
                  f"{'GFLOP/s':>8s} {'%peak':>7s} {'peak MB':>8s} {'estimate MB':>11s}", flush=True)
            for shape in shapes:
                for what in whats:
                    for name, variant in variants(what, args.variants, args.trl, args.ckpt):
                        python = args.trl_python if what == "ppo" and variant.get("side") == "trl" else sys.executable
                        r = run_worker(str(root), shape, what, args.steps, variant, args.precision, python)
                        rows.append({"positions": positions, "shape": shape, "parameters": _parameters(root / shape), "what": what,
                                     "variant": name, **r})
                        if "failed" in r:
                            print(f"{shape:6s} {what:8s} {name:22s} failed: {r['failed']}", flush=True)
                            continue
                        flops = f"{r['gflops']:8.1f} {100 * r['gflops'] / peak:6.0f}%" if r["gflops"] else f"{'-':>8s} {'-':>7s}"
                        tokens = f"{r['tokens_per_s']:9.0f}" if r["tokens_per_s"] is not None else f"{'-':>9s}"
                        estimate = f"{r['estimate_mb']:11.0f}" if r["estimate_mb"] is not None else f"{'-':>11s}"
                        print(f"{shape:6s} {what:8s} {name:22s} {r['seconds']:8.2f} {r['samples_per_s']:10.2f} {tokens} "
                              f"{flops} {r['peak_mb']:8.0f} {estimate}", flush=True)
                        if r.get("estimate_parts"):
                            print(f"{'':6s} estimate: {r['estimate_parts']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"precision": args.precision, "peak_gflops": {"fp32": peak32, "bf16": peak16}, "rows": rows}, indent=1))
    if args.trl:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from real_lengths_trl import DIFFERENCES

        print("\nSettings in which TRL's side differs from rlhf_lab's (benchmarks/real_lengths_trl.py says why each is TRL's best):")
        for what in ["all", *whats]:
            for line in DIFFERENCES.get(what, []):
                print(f"  {what}: {line}")


if __name__ == "__main__":
    main()
