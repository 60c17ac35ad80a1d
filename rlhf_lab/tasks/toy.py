"""The embedded default task: short opinions about things, judged by a hidden utility.

A fresh machine has no weights and no network, so everything is generated here: prompts such as
"describe the quiet garden ." and answers such as "the garden is lovely and dull .". Demonstrations
mix positive, negative and neutral adjectives and are sometimes off-topic, so the SFT policy is
mediocre on purpose. The hidden utility (what the simulated annotators and the gold evaluation use):

    utility = sum(sentiment of each adjective) + relevance (+1 on-topic, -1 off-topic)
              + length_weight * number of words

The length term rewards longer answers a little, so a policy can gain reward by length alone: the
evaluation reports response length beside reward to make that visible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab import hookimpl
from rlhf_lab.tasks.base import Task

NOUNS = ("cat", "dog", "garden", "city", "river", "movie", "book", "song", "coffee", "train", "beach", "market")
MODIFIERS = ("old", "new", "small", "big", "red", "quiet", "local", "famous")
PROMPT_TEMPLATES = ("tell me about the {mod} {noun} .", "what do you think of the {mod} {noun} ?", "describe the {mod} {noun} .")
POSITIVE = ("good", "great", "lovely", "pleasant", "wonderful", "charming")
NEGATIVE = ("bad", "awful", "dull", "boring", "ugly", "gloomy")
NEUTRAL = ("ordinary", "plain", "average", "usual")
SENTIMENT = {**{w: 1.0 for w in POSITIVE}, **{w: -1.0 for w in NEGATIVE}, **{w: 0.0 for w in NEUTRAL}}
RESPONSE_TEMPLATES = (
    "the {noun} is {a} .",
    "honestly , the {noun} is {a} .",
    "the {noun} is {a} and {b} .",
    "i think the {noun} is {a} , {b} and {c} .",
)
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<pad>"


@dataclass
class ToyTaskConfig:
    """Schema of ``task=toy``."""

    name: str = "toy"
    num_sft_examples: int = 4000
    """Generated demonstrations for SFT (plus 10% held out)."""
    heldout_fraction: float = 0.2
    """Share of prompts kept for evaluation only."""
    on_topic_probability: float = 0.8
    """Chance that a demonstration talks about the noun the prompt asked about."""
    length_weight: float = 0.1
    """Utility per word of the response: the annotators' length bias."""
    vocab_size: int = 600
    """BPE vocabulary trained on the generated corpus."""
    n_layer: int = 2
    """Transformer blocks of the tiny GPT-2."""
    n_head: int = 4
    """Attention heads per block."""
    n_embd: int = 64
    """Hidden size."""
    n_positions: int = 64
    """Context length: prompt plus response must fit."""

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"task.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if not 0.0 <= self.on_topic_probability <= 1.0:
            raise ValueError(f"task.on_topic_probability must be in [0, 1], got {self.on_topic_probability}")
        for key in ("num_sft_examples", "n_layer", "n_head", "n_embd"):
            if getattr(self, key) < 1:
                raise ValueError(f"task.{key} must be >= 1, got {getattr(self, key)}")
        if self.vocab_size < 64 or self.n_positions < 8:
            raise ValueError(f"task.vocab_size must be >= 64 and task.n_positions >= 8, got {self.vocab_size} and {self.n_positions}")
        if self.n_embd % self.n_head:
            raise ValueError(f"task.n_embd ({self.n_embd}) must be divisible by task.n_head ({self.n_head})")


def toy_utility(prompt: str, response: str, length_weight: float) -> float:
    """Hidden utility of ``response`` to ``prompt`` (see the module docstring)."""
    words = response.split()
    topic = next((w for w in prompt.split() if w in NOUNS), None)
    nouns = [w for w in words if w in NOUNS]
    relevance = 0.0
    if nouns:
        relevance = 1.0 if all(n == topic for n in nouns) else -1.0
    return sum(SENTIMENT.get(w, 0.0) for w in words) + relevance + length_weight * len(words)


def _response(rng: random.Random, topic: str, on_topic_probability: float) -> str:
    noun = topic if rng.random() < on_topic_probability else rng.choice([n for n in NOUNS if n != topic])
    adjectives = list(SENTIMENT)
    template = rng.choice(RESPONSE_TEMPLATES)
    return template.format(noun=noun, a=rng.choice(adjectives), b=rng.choice(adjectives), c=rng.choice(adjectives))


def make_toy_task(cfg: ToyTaskConfig, seed: int) -> Task:
    """Generate the prompts, demonstrations and utility, deterministically from ``seed``."""
    rng = random.Random(seed)
    prompts = [t.format(mod=m, noun=n) for t in PROMPT_TEMPLATES for m in MODIFIERS for n in NOUNS]
    rng.shuffle(prompts)
    n_eval = max(1, int(len(prompts) * cfg.heldout_fraction))
    eval_prompts, train_prompts = prompts[:n_eval], prompts[n_eval:]

    def demos(pool: list[str], count: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(count):
            prompt = rng.choice(pool)
            topic = next(w for w in prompt.split() if w in NOUNS)
            out.append((prompt, _response(rng, topic, cfg.on_topic_probability)))
        return out

    sft_train = demos(train_prompts, cfg.num_sft_examples)
    sft_eval = demos(eval_prompts, max(1, cfg.num_sft_examples // 10))

    def build_base_model(out_dir: Path) -> None:
        _build_tokenizer_and_model(cfg, [p for p, _ in sft_train] + eval_prompts, [r for _, r in sft_train], seed, out_dir)

    return Task(
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        sft_train=sft_train,
        sft_eval=sft_eval,
        utility=lambda prompt, response: toy_utility(prompt, response, cfg.length_weight),
        build_base_model=build_base_model,
    )


def _build_tokenizer_and_model(cfg: ToyTaskConfig, prompts: list[str], responses: list[str], seed: int, out_dir: Path) -> None:
    """Train a byte-level BPE tokenizer on the corpus and save it with a fresh tiny GPT-2."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = prompts + [" " + r for r in responses]
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    tokenizer.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(out_dir)


@hookimpl
def rlhf_lab_register_tasks(register):
    register("toy", make_toy_task, ToyTaskConfig)
