"""rlhf_lab vs TRL, side by side: samples/s and peak memory of the same training on the same data.

One tiny model (the toy task's GPT-2, built locally, briefly SFT-trained so that it answers and stops),
one set of prompts and preference pairs, the same batch size, response length, learning rate, fp32
and number of optimiser (or rollout) steps on both sides. Each (comparison, side, repeat) runs in a
fresh Python process, the sides interleaved, so neither inherits the other's allocator state. Timed:
the training loop only (Lightning's ``Trainer.fit`` / TRL's ``trainer.train()``), not imports,
model loading or data preparation. Nothing is asserted. Needs the bench extra:

    pip install -e ".[bench]"
    python benchmarks/trl_comparison.py                                  # dpo,reward,grpo,rloo,ppo
    python benchmarks/trl_comparison.py --what dpo,grpo --steps 60 --repeats 3

TRL removed its PPOTrainer after 1.12 (last in ``trl.experimental.ppo``). For PPO, give the Python of
a second environment with ``trl==1.12.0`` (and rlhf_lab) installed; without it, PPO vs TRL is skipped:

    python3 -m venv .venv-trl112 && .venv-trl112/bin/pip install "torch==2.13.0" -e . "trl==1.12.0"
    python benchmarks/trl_comparison.py --what ppo --ppo-python .venv-trl112/bin/python

samples/s counts preference pairs (dpo, reward) or generated completions (grpo, rloo, ppo) per
second; ratio is rlhf_lab / TRL (above 1: rlhf_lab is faster). Peak memory is the growth of the
process's resident memory during the loop (CPU, polled), or ``torch.cuda.max_memory_allocated``
during the loop (GPU, weights included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

COMPARISONS = ("dpo", "reward", "grpo", "rloo", "ppo")
SIDES = ("rlhf_lab", "trl")
DEFAULT_BATCH = {"dpo": 64, "reward": 32, "grpo": 16, "rloo": 16, "ppo": 64}
"""rlhf_lab's defaults: preference pairs per step (dpo, reward) or prompts per rollout (grpo, rloo, ppo)."""
SAMPLES_PER_PROMPT = {"grpo": 4, "rloo": 4, "ppo": 1}
PPO_MINIBATCH, PPO_EPOCHS = 16, 4
LENGTH_TARGET = 8
"""GRPO and RLOO reward: ``-|words - 8|`` (rlhf_lab.rewards.rules.word_count), the same function on both sides."""
SEED = 0
NO_GC_ENV = "RLHF_LAB_BENCH_TRL_NO_GC"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


@dataclass
class Run:
    """What a worker process needs; written by the parent to ``<root>/run.json``."""

    root: str
    steps: int
    batch: dict
    max_new_tokens: int
    device: str

    @property
    def policy(self) -> str:
        return str(Path(self.root) / "policy")

    @property
    def reward_model(self) -> str:
        return str(Path(self.root) / "reward_model")

    def trl_args(self, **overrides) -> dict:
        """TrainingArguments shared by every TRL config: fp32, no logging, eval, saving or wandb."""
        common = dict(
            output_dir=str(Path(self.root) / "trl_output"), report_to="none", save_strategy="no", eval_strategy="no",
            logging_strategy="no", disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False,
            use_cpu=self.device == "cpu", seed=SEED, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        )
        return {**common, **overrides}


SHARED_DIFFERENCES = [
    "activation: rlhf_lab runs GPT-2's tanh GELU as torch's one kernel (models.loading.fuse_activations, the same "
    "function to rounding); TRL loads the model with plain from_pretrained",
    "loop: Lightning's Trainer (rlhf_lab) and transformers' Trainer (TRL); on both, fp32, AdamW with a constant "
    "learning rate, no warm-up and no weight decay",
]
DIFFERENCES = {
    "dpo": [
        "reference log-probs: rlhf_lab computes them once before training, TRL at every step "
        "(precompute_ref_log_probs=False): over one epoch the same number of reference forwards",
        "batches: rlhf_lab puts each response after its prompt as one sequence, projects only response positions onto "
        "the vocabulary, and groups pairs of similar length (algo.group_by_length); TRL pads prompt and response "
        "apart (padding_free=False, its default)",
        "dropout: off on both sides (rlhf_lab's DPO always; TRL's disable_dropout=True, its default)",
    ],
    "reward": [
        "batches: rlhf_lab forwards each record's prompt once with both responses after it (reward.share_prompt, a "
        "block mask, the same scores); TRL forwards chosen and rejected as two sequences",
        "dropout: kept on both sides here (GPT-2's 0.1; TRL disable_dropout=False), though both turn it off by default",
        "gradient clipping: none on either side (TRL max_grad_norm=0)",
    ],
    "grpo": [
        "rollout: rlhf_lab prefills each prompt once for its k samples and drops ended rows (rlhf_lab.rollout); TRL "
        "samples with transformers' generate",
        "KL: TRL's use_bias_correction_kl=True (its default) multiplies the k3 term by the importance ratio, which is "
        "1 with one update per rollout (num_iterations=1): the same loss, a few more operations on TRL's side",
        "AdamW eps: 1e-5 on both sides (TRL adam_epsilon=1e-5)",
    ],
    "rloo": [
        "rollout: rlhf_lab prefills each prompt once for its k samples and drops ended rows (rlhf_lab.rollout); TRL "
        "samples with transformers' generate",
        "AdamW eps: 1e-5 on both sides (TRL adam_epsilon=1e-5)",
    ],
    "ppo": [
        "gradient clipping: rlhf_lab clips policy and critic gradients to norm 1.0 (algo.max_grad_norm); TRL 1.12's "
        "PPOTrainer clips none (work on rlhf_lab's side only)",
        "rollout: rlhf_lab's sampler drops ended rows; TRL samples with transformers' generate",
        "TRL's PPOTrainer calls gc.collect() every update unless --trl-without-gc",
    ],
}
"""Every setting in which the two sides of a comparison differ, printed with the table."""


class Skip(Exception):
    """A side that cannot run here (e.g. no PPOTrainer in this TRL): reported in the table, not an error."""


# --- shared set-up (parent process) -------------------------------------------------------------------


def quiet() -> None:
    """No progress bars, load reports, Lightning tips or warnings: the figures are the output."""
    import logging
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def lightning_trainer(max_epochs: int = 1):
    """The pipeline's Trainer recipe (rlhf_lab.training.build_trainer) without logger, checkpoints,
    progress bar or validation."""
    from lightning.pytorch import Trainer

    return Trainer(
        accelerator="auto", devices=1, precision="32-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        max_epochs=max_epochs,
    )


def prepare(run: Run, sft_epochs: int) -> None:
    """Tiny GPT-2 + tokenizer, a short SFT, a scalar-head reward model, prompts and preference records."""
    import random

    from lightning.pytorch import seed_everything
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.records import PreferenceRecord, write_jsonl
    from rlhf_lab.models.loading import load_policy, load_tokenizer
    from rlhf_lab.models.value_model import RewardNormaliser
    from rlhf_lab.stages.sft import SFTModule, demonstration_loader, tokenize_demonstrations
    from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

    root = Path(run.root)
    task = make_toy_task(ToyTaskConfig(), seed=SEED)
    task.build_base_model(root / "base")
    tokenizer = load_tokenizer(str(root / "base"))
    seed_everything(SEED, verbose=False)
    loader = demonstration_loader(tokenize_demonstrations(tokenizer, task.sft_train), tokenizer.pad_token_id, 64, True, SEED)
    module = SFTModule(load_policy(str(root / "base")), lr=1e-3, weight_decay=0.0, train_loader=loader)
    if sft_epochs:  # an untrained model never emits EOS: every response would run to max_new_tokens
        lightning_trainer(max_epochs=sft_epochs).fit(module)
    module.model.save_pretrained(run.policy)
    tokenizer.save_pretrained(run.policy)
    # PPO's reward model (TRL's PPOTrainer takes only a model): the policy's backbone with a fresh scalar
    # head. Its scores are meaningless, which does not change the cost of computing them.
    rm = AutoModelForSequenceClassification.from_pretrained(run.policy, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(run.reward_model)
    tokenizer.save_pretrained(run.reward_model)
    RewardNormaliser().save(Path(run.reward_model))
    (root / "prompts.json").write_text(json.dumps(task.train_prompts))
    # Preference pairs: two demonstration responses per prompt, ranked by the task's utility; exactly
    # steps x batch records, so one epoch is `steps` optimiser steps.
    rng = random.Random(SEED)
    responses = sorted({r for _, r in task.sft_train})
    for what in ("dpo", "reward"):
        records = []
        for i in range(run.steps * run.batch[what] + 1):
            prompt = task.train_prompts[i % len(task.train_prompts)]
            a, b = rng.sample(responses, 2)
            ranking = [0, 1] if task.utility(prompt, a) >= task.utility(prompt, b) else [1, 0]
            records.append(PreferenceRecord(prompt=prompt, responses=[a, b], ranking=ranking))
        (root / what).mkdir()
        write_jsonl(records[:-1], root / what / "train.jsonl")
        write_jsonl(records[-1:], root / what / "heldout.jsonl")  # DPOModule reads one; validation is off


# --- the comparisons: each returns (train function, samples it processes) for one side ---------------


def _prompts(run: Run) -> list[str]:
    return json.loads((Path(run.root) / "prompts.json").read_text())


def _algo_inputs(run: Run, **extra):
    from rlhf_lab.algos.inputs import AlgoInputs
    from rlhf_lab.models.loading import load_policy, load_tokenizer

    reference = load_policy(run.policy).eval().requires_grad_(False)
    return AlgoInputs(sft=Path(run.policy), reference=reference, tokenizer=load_tokenizer(run.policy),
                      prompts=_prompts(run), seed=SEED, **extra)


def _trl(*names: str, module: str = "trl"):
    """TRL classes by name, or Skip naming the installed version when this TRL lacks them."""
    import importlib

    try:
        import trl
    except ImportError as exc:
        raise Skip(f"TRL not importable ({exc}); pip install -e '.[bench]'") from None
    try:
        found = importlib.import_module(module)
        return [getattr(found, name) for name in names]
    except (ImportError, AttributeError):
        hint = "; pass --ppo-python, the Python of an environment with trl==1.12.0" if module == "trl.experimental.ppo" else ""
        raise Skip(f"trl {trl.__version__} has no {module}.{names[-1]}{hint}") from None


def stock_policy(run: Run):
    """The policy as plain transformers loads it, for TRL (rlhf_lab's loader fuses GPT-2's activation)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(run.policy)


def _preference_texts(run: Run, what: str) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) texts of the records rlhf_lab trains on."""
    from rlhf_lab.records import read_jsonl

    return [(r.prompt, r.responses[r.ranking[0]], r.responses[r.ranking[1]]) for r in read_jsonl(Path(run.root) / what / "train.jsonl")]


def dpo(side: str, run: Run):
    """DPO, sigmoid loss, beta 0.1, AdamW lr 1e-4, clip 1.0; chosen and rejected in one forward on both sides."""
    from rlhf_lab.models.loading import load_tokenizer

    batch, samples = run.batch["dpo"], run.steps * run.batch["dpo"]
    if side == "rlhf_lab":
        from rlhf_lab.algos.dpo import DPOModule
        from rlhf_lab.algos.dpo_config import DPOConfig

        module = DPOModule(DPOConfig(beta=0.1, lr=1e-4, epochs=1, batch_size=batch),
                           _algo_inputs(run, preferences=Path(run.root) / "dpo"))
        return lambda: lightning_trainer().fit(module), samples
    DPOConfig, DPOTrainer = _trl("DPOConfig", "DPOTrainer")
    from datasets import Dataset

    from rlhf_lab.data import RESPONSE_SEPARATOR

    # Text in, as TRL requires; it tokenises prompt + separator + response + EOS to the very ids
    # rlhf_lab's encode_prompt / encode_response give (checked on the toy corpus).
    data = Dataset.from_list([{"prompt": p, "chosen": RESPONSE_SEPARATOR + c, "rejected": RESPONSE_SEPARATOR + r}
                              for p, c, r in _preference_texts(run, "dpo")])
    # Reference log-probs: TRL computes them each step, rlhf_lab once before training (inside fit);
    # over one epoch that is the same number of reference forwards.
    args = DPOConfig(**run.trl_args(per_device_train_batch_size=batch, max_steps=run.steps, learning_rate=1e-4, beta=0.1,
                                    loss_type=["sigmoid"], max_grad_norm=1.0, max_length=64, precompute_ref_log_probs=False))
    trainer = DPOTrainer(model=stock_policy(run), ref_model=stock_policy(run), args=args,
                         train_dataset=data, processing_class=load_tokenizer(run.policy))
    return trainer.train, samples


def reward(side: str, run: Run):
    """Pairwise (Bradley-Terry) reward model on the policy's backbone, AdamW lr 1e-3, no clipping, dropout on."""
    from rlhf_lab.models.loading import load_tokenizer

    batch, samples = run.batch["reward"], run.steps * run.batch["reward"]
    tokenizer = load_tokenizer(run.policy)
    if side == "rlhf_lab":
        from lightning.pytorch import seed_everything

        from rlhf_lab.records import read_jsonl
        from rlhf_lab.models.loading import load_value_model
        from rlhf_lab.rewards.configs import PairwiseRewardConfig
        from rlhf_lab.rewards.pairwise import PairwiseObjective
        from rlhf_lab.stages.reward import RewardModule, record_loader

        seed_everything(SEED, verbose=False)
        objective = PairwiseObjective(PairwiseRewardConfig())
        loader = record_loader(read_jsonl(Path(run.root) / "reward" / "train.jsonl"), objective, tokenizer, batch, True, SEED)
        module = RewardModule(load_value_model(run.policy), objective, lr=1e-3, weight_decay=0.0, train_loader=loader)
        return lambda: lightning_trainer().fit(module), samples
    RewardConfig, RewardTrainer = _trl("RewardConfig", "RewardTrainer")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.data import encode_prompt, encode_response

    def ids(prompt, response):
        return encode_prompt(tokenizer, prompt) + encode_response(tokenizer, response)

    # Pre-tokenised with rlhf_lab's own encoders: both sides see the same token ids.
    data = Dataset.from_list([{"chosen_ids": ids(p, c), "rejected_ids": ids(p, r)} for p, c, r in _preference_texts(run, "reward")])
    model = AutoModelForSequenceClassification.from_pretrained(run.policy, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    # rlhf_lab's RewardModule keeps dropout (GPT-2: 0.1) and does not clip gradients: so does TRL here.
    args = RewardConfig(**run.trl_args(per_device_train_batch_size=batch, max_steps=run.steps, learning_rate=1e-3,
                                       max_grad_norm=0.0, max_length=64, disable_dropout=False))
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    return trainer.train, samples


def length_reward(prompts, completions, **kwargs) -> list[float]:
    """TRL's reward-function signature around the rule rlhf_lab uses (RuleReward strips both texts too)."""
    from rlhf_lab.rewards.rules import word_count

    return [word_count(p.strip(), c.strip(), target=LENGTH_TARGET) for p, c in zip(prompts, completions)]


def _critic_free(what: str, side: str, run: Run):
    """GRPO or RLOO: k samples per prompt, one gradient step per rollout, KL 0.05 to the SFT reference."""
    from rlhf_lab.models.loading import load_tokenizer

    prompts, k = run.batch[what], SAMPLES_PER_PROMPT[what]
    samples = run.steps * prompts * k
    if side == "rlhf_lab":
        from rlhf_lab.algos.policy_gradient import PolicyGradientModule
        from rlhf_lab.algos.policy_gradient_config import GRPOConfig, RLOOConfig
        from rlhf_lab.config import SamplingConfig
        from rlhf_lab.rewards.function import RuleReward
        from rlhf_lab.rewards.rules import word_count

        config = {"grpo": GRPOConfig, "rloo": RLOOConfig}[what](
            lr=1e-4, kl_coef=0.05, rollout_batch_size=prompts, samples_per_prompt=k, minibatch_size=prompts * k,
            total_episodes=run.steps * prompts, missing_eos_penalty=None, sampling=SamplingConfig(max_new_tokens=run.max_new_tokens),
        )
        inputs = _algo_inputs(run)
        inputs.reward = RuleReward(word_count, inputs.tokenizer, {"target": LENGTH_TARGET})
        module = PolicyGradientModule(config, inputs)
        return lambda: lightning_trainer().fit(module), samples
    from datasets import Dataset

    Config, Trainer = _trl(*{"grpo": ("GRPOConfig", "GRPOTrainer"), "rloo": ("RLOOConfig", "RLOOTrainer")}[what])
    common = run.trl_args(
        per_device_train_batch_size=prompts * k, gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        num_generations=k, max_completion_length=run.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, beta=0.05,
        epsilon=0.2, learning_rate=1e-4, adam_epsilon=1e-5, max_grad_norm=1.0, max_steps=run.steps, disable_dropout=True,
    )
    # rlhf_lab: GRPO adds kl_coef * k3 to a token-mean loss over the rollout (TRL: "bnpo"); RLOO
    # subtracts kl_coef * sum(k1) from the reward, leave-one-out baseline, advantages not whitened.
    extra = {"grpo": dict(loss_type="bnpo", scale_rewards="group"), "rloo": dict(normalize_advantages=False)}[what]
    trainer = Trainer(model=stock_policy(run), reward_funcs=[length_reward], args=Config(**common, **extra),
                      train_dataset=Dataset.from_list([{"prompt": p} for p in _prompts(run)]),
                      processing_class=load_tokenizer(run.policy))
    return trainer.train, samples


def grpo(side: str, run: Run):
    return _critic_free("grpo", side, run)


def rloo(side: str, run: Run):
    return _critic_free("rloo", side, run)


def ppo(side: str, run: Run):
    """PPO with a critic initialised from the reward model: 4 epochs x (rollout / 16) minibatches, KL k1 0.05."""
    from rlhf_lab.models.loading import load_tokenizer

    prompts = run.batch["ppo"]
    if prompts % PPO_MINIBATCH:
        raise ValueError(f"ppo: --batch-size must be a multiple of {PPO_MINIBATCH}")
    samples = run.steps * prompts
    if side == "rlhf_lab":
        from rlhf_lab.algos.ppo import PPOModule
        from rlhf_lab.algos.ppo_config import PPOConfig
        from rlhf_lab.config import SamplingConfig
        from rlhf_lab.models.loading import load_value_model
        from rlhf_lab.models.value_model import RewardNormaliser
        from rlhf_lab.rewards.function import LearnedReward

        config = PPOConfig(lr=3e-4, kl_coef=0.05, rollout_batch_size=prompts, minibatch_size=PPO_MINIBATCH, ppo_epochs=PPO_EPOCHS,
                           total_episodes=samples, missing_eos_penalty=1.0, sampling=SamplingConfig(max_new_tokens=run.max_new_tokens))
        reward_fn = LearnedReward(load_value_model(run.reward_model), RewardNormaliser.load(Path(run.reward_model)))
        module = PPOModule(config, _algo_inputs(run, reward=reward_fn))
        return lambda: lightning_trainer().fit(module), samples
    PPOConfig, PPOTrainer = _trl("PPOConfig", "PPOTrainer", module="trl.experimental.ppo")
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.data import encode_prompt

    tokenizer = load_tokenizer(run.policy)
    tokenizer.padding_side = "left"  # TRL's collator pads the prompts it generates from
    data = Dataset.from_list([{"input_ids": encode_prompt(tokenizer, p)} for p in _prompts(run)])
    # One gradient step per minibatch (no accumulation), like rlhf_lab; TRL's PPO does not clip gradients.
    args = PPOConfig(**run.trl_args(
        per_device_train_batch_size=prompts, gradient_accumulation_steps=1, num_mini_batches=prompts // PPO_MINIBATCH,
        num_ppo_epochs=PPO_EPOCHS, total_episodes=samples, local_rollout_forward_batch_size=prompts,
        response_length=run.max_new_tokens, temperature=1.0, stop_token="eos", missing_eos_penalty=1.0, kl_coef=0.05,
        kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, whiten_rewards=False,
        learning_rate=3e-4, adam_epsilon=1e-5, num_sample_generations=0,
    ))

    def scalar_model():
        return AutoModelForSequenceClassification.from_pretrained(run.reward_model, num_labels=1)

    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=stock_policy(run), ref_model=stock_policy(run),
                         reward_model=scalar_model(), value_model=scalar_model(), train_dataset=data)
    return trainer.train, samples


# --- measurement (worker process) -----------------------------------------------------------------------


class PeakMemory:
    """Peak growth of resident memory while the block runs (CPU, polled in a thread), or CUDA peak allocation."""

    def __init__(self, device: str, interval: float = 0.005) -> None:
        self.device, self.interval, self.peak_mb = device, interval, 0.0

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return self
        import psutil

        process = psutil.Process()
        self._start = self._peak = process.memory_info().rss
        self._done = threading.Event()

        def poll():
            while not self._done.wait(self.interval):
                self._peak = max(self._peak, process.memory_info().rss)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            return
        self._done.set()
        self._thread.join()
        self.peak_mb = (self._peak - self._start) / 2**20


def worker(what: str, side: str, root: str) -> dict:
    """Build one side of one comparison, run its training loop once, return the figures."""
    import torch

    quiet()
    run = Run(**json.loads((Path(root) / "run.json").read_text()))
    if side == "trl" and os.environ.get(NO_GC_ENV) == "1":
        # TRL's PPO/RLOO trainers call gc.collect() (and empty the device cache) every update; this
        # measures TRL's best case without them.
        import gc

        gc.collect = lambda generation=2: 0
    try:
        train, samples = {"dpo": dpo, "reward": reward, "grpo": grpo, "rloo": rloo, "ppo": ppo}[what](side, run)
    except Skip as exc:
        return {"skipped": str(exc)}
    with PeakMemory(run.device) as memory:
        start = time.perf_counter()
        train()
        if run.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    version = "" if side == "rlhf_lab" else __import__("trl").__version__
    return {"seconds": seconds, "samples_per_s": samples / seconds, "peak_mb": memory.peak_mb, "version": version}


def run_worker(python: str, what: str, side: str, root: str) -> dict:
    command = [python, os.path.abspath(__file__), "--worker", f"{what}:{side}", "--root", root]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **OFFLINE})
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"failed": f"exit {proc.returncode}: {tail}"}


# --- the table ------------------------------------------------------------------------------------------


def summarise(results: list[dict]) -> dict:
    """Median of the repeats; a skip or failure if every repeat was one."""
    good = [r for r in results if "samples_per_s" in r]
    if not good:
        return results[0]
    return {"samples_per_s": statistics.median(r["samples_per_s"] for r in good),
            "peak_mb": statistics.median(r["peak_mb"] for r in good), "version": good[0]["version"]}


def print_table(whats: list[str], results: dict) -> None:
    print(f"\n{'what':8s} {'rlhf_lab samples/s':>18s} {'TRL samples/s':>14s} {'ratio':>7s} "
          f"{'rlhf_lab peak MB':>16s} {'TRL peak MB':>12s}  TRL")
    for what in whats:
        ours, theirs = summarise(results[what, "rlhf_lab"]), summarise(results[what, "trl"])
        if "samples_per_s" not in ours:
            print(f"{what:8s} rlhf_lab {ours.get('skipped') or ours.get('failed')}")
            continue
        if "samples_per_s" not in theirs:
            print(f"{what:8s} {ours['samples_per_s']:18.1f} {'-':>14s} {'-':>7s} {ours['peak_mb']:16.1f} {'-':>12s}  "
                  f"{'skipped' if 'skipped' in theirs else 'failed'}: {theirs.get('skipped') or theirs.get('failed')}")
            continue
        ratio = ours["samples_per_s"] / theirs["samples_per_s"]
        print(f"{what:8s} {ours['samples_per_s']:18.1f} {theirs['samples_per_s']:14.1f} {ratio:6.2f}x "
              f"{ours['peak_mb']:16.1f} {theirs['peak_mb']:12.1f}  {theirs['version']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", default=",".join(COMPARISONS), help=f"comma-separated subset of {','.join(COMPARISONS)}")
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps (dpo, reward, grpo, rloo) or PPO rollouts per run "
                        "(shorter runs favour rlhf_lab: TRL's first steps are slower)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved; the table shows medians")
    parser.add_argument("--batch-size", type=int, help="pairs (dpo, reward) or prompts per rollout (grpo, rloo, ppo); "
                        f"default: rlhf_lab's, {DEFAULT_BATCH}")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="response length cap (rlhf_lab's default: 20)")
    parser.add_argument("--sft-epochs", type=int, default=1, help="SFT epochs of the start policy (0: the untrained model)")
    parser.add_argument("--ppo-python", help="Python of an environment with trl==1.12.0 for TRL's PPO side (default: this one)")
    parser.add_argument("--trl-without-gc", action="store_true", help="make gc.collect() a no-op on the TRL side "
                        "(TRL's PPO calls it every update): TRL's best case")
    parser.add_argument("--threads", type=int, help="torch threads in every run (default: torch's own); on a small "
                        "machine two threads' scheduling can make single runs vary by 30%%, one thread is steadier")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    if args.threads:  # inherited by the worker processes, set before torch is imported
        os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.trl_without_gc:
        os.environ[NO_GC_ENV] = "1"
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker.split(":"), args.root)), flush=True)
        return

    import lightning
    import torch
    import transformers

    quiet()
    whats = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = set(whats) - set(COMPARISONS)
    if unknown:
        parser.error(f"--what: unknown {', '.join(sorted(unknown))}; choose from {','.join(COMPARISONS)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = {w: args.batch_size or DEFAULT_BATCH[w] for w in COMPARISONS}
    with tempfile.TemporaryDirectory(prefix="rlhf_lab_vs_trl_") as root:
        run = Run(root=root, steps=args.steps, batch=batch, max_new_tokens=args.max_new_tokens, device=device)
        (Path(root) / "run.json").write_text(json.dumps(asdict(run)))
        print(f"building the toy model and data (SFT epochs: {args.sft_epochs}) ...", flush=True)
        prepare(run, args.sft_epochs)
        print(f"device={device} threads={torch.get_num_threads()} steps={args.steps} repeats={args.repeats} "
              f"batch={ {w: batch[w] for w in whats} } samples_per_prompt={ {w: SAMPLES_PER_PROMPT[w] for w in whats if w in SAMPLES_PER_PROMPT} } "
              f"max_new_tokens={args.max_new_tokens} torch={torch.__version__} transformers={transformers.__version__} "
              f"lightning={lightning.__version__}", flush=True)
        results = {(w, s): [] for w in whats for s in SIDES}
        for repeat in range(args.repeats):
            for what in whats:
                for side in SIDES if repeat % 2 == 0 else SIDES[::-1]:  # alternate who goes first
                    python = args.ppo_python if (what, side) == ("ppo", "trl") and args.ppo_python else sys.executable
                    result = run_worker(python, what, side, root)
                    results[what, side].append(result)
                    figures = (f"{result['samples_per_s']:.1f} samples/s, {result['seconds']:.1f} s, peak +{result['peak_mb']:.0f} MB"
                               if "samples_per_s" in result else result.get("skipped") or result.get("failed"))
                    print(f"  repeat {repeat + 1}/{args.repeats} {what:6s} {side:8s} {figures}", flush=True)
        print_table(whats, results)
        print("\nWhere the two sides differ (everything else is the same: data, batch sizes, lengths, learning rates, steps):")
        for line in SHARED_DIFFERENCES:
            print(f"  all     {line}")
        for what in whats:
            for line in DIFFERENCES[what]:
                print(f"  {what:7s} {line}")


if __name__ == "__main__":
    main()
