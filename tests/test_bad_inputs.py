"""The project's table of bad inputs: each one, through the real command line, ends the run before any
training with exit status 2 and one message naming the key, value, file:line, plugin or variable, and
no traceback.

The command runs in this process (``rlhf_lab.cli.main`` with ``sys.argv`` set), so a case costs a
config composition, not an interpreter start; ``Trainer.fit`` is replaced by a trap, so a case that
would start training fails the test instead. Cases are grouped by kind; add one whenever a bad input
is found that slips through.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
from conftest import TINY_ONLINE, TINY_UPSTREAM, run_main
from hydra.core.global_hydra import GlobalHydra

import rlhf_lab.plugin_manager as plugin_manager
from rlhf_lab import cli, hookimpl
from rlhf_lab.config import register_engine_schemas
from rlhf_lab.run_lock import LOCK_NAME
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

TINY = ["task.num_sft_examples=200", "sft.epochs=1", "trainer.progress_bar=none", "logger=csv"]
DPO_FILE = ["algo=dpo", "feedback=dataset"]


def _rows(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _pairs(n: int = 30) -> list[dict]:
    return [{"prompt": f"tell me about the tea {i} .", "chosen": f"the tea is good {i} .", "rejected": f"the tea is bad {i} ."} for i in range(n)]


def _not_a_policy(root) -> None:
    """Models a user might point model.name_or_path at by mistake, each with the toy model's tokenizer:
    an encoder saved without a language-model head, and a causal LM whose embedding is smaller than
    the tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    bert = AutoConfig.for_model("bert", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128)
    AutoModel.from_config(bert).save_pretrained(root / "bert")
    small = AutoConfig.for_model("gpt2", vocab_size=len(tokenizer) - 5, n_embd=32, n_layer=1, n_head=2, n_positions=128)
    AutoModelForCausalLM.from_config(small).save_pretrained(root / "small_vocab")
    for name in ("bert", "small_vocab"):
        tokenizer.save_pretrained(root / name)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every bad file of the table, beside good ones, and a tiny model for ``task=dataset``."""
    root = tmp_path_factory.mktemp("bad_files")
    make_toy_task(ToyTaskConfig(num_sft_examples=200, n_positions=128), seed=0).build_base_model(root / "model")
    _not_a_policy(root)
    good = _pairs()
    texts = {
        "good.jsonl": _rows(*good),
        "malformed.jsonl": _rows(*good[:40]) + "{not json\n",
        "array_line.jsonl": _rows(*good[:3]) + "[1, 2]\n",
        "type_change.jsonl": _rows(*good[:3], {"prompt": 7, "chosen": "a", "rejected": "b"}),
        "empty.jsonl": "",
        "blank.jsonl": "\n\n  \n",
        "wrong_ext.txt": _rows(*good),
        "pair_identical.jsonl": _rows(*good[:5], {"prompt": "p", "chosen": "same", "rejected": "same"}),
        "pair_empty.jsonl": _rows(*good[:5], {"prompt": "p", "chosen": "  ", "rejected": "b"}),
        "pair_not_text.jsonl": _rows({"prompt": "p", "chosen": ["a"], "rejected": "b"}, *good[:5]),
        "pair_empty_prompt.jsonl": _rows(*good[:5], {"prompt": "", "chosen": "a", "rejected": "b"}),
        "native_identical.jsonl": _rows(*[{"prompt": f"p{i}", "responses": ["x", "x"], "ranking": [0, 1]} for i in range(5)]),
        "native_empty.jsonl": _rows(*[{"prompt": f"p{i}", "responses": ["", "y"], "ranking": [0, 1]} for i in range(5)]),
        "native_ranking.jsonl": _rows(*[{"prompt": f"p{i}", "responses": ["x", "y"], "ranking": [0, 0]} for i in range(5)]),
        "native_unknown.jsonl": _rows(*[{"prompt": f"p{i}", "responses": ["x", "y"], "ranking": [0, 1], "votes": 3} for i in range(5)]),
        "native_single.jsonl": _rows(*[{"prompt": f"p{i}", "responses": ["x"], "ranking": [0]} for i in range(5)]),
        "native_bool_ranking.jsonl": _rows(*[{"prompt": f"p{i}", "responses": ["x", "y"], "ranking": [True, False]} for i in range(5)]),
        "native_text_scores.jsonl": _rows(*[{"prompt": f"p{i}", "responses": ["x", "y"], "scores": ["good", 1.0]} for i in range(5)]),
        "native_annotator.jsonl": _rows(*[{"prompt": f"p{i}", "responses": ["x", "y"], "ranking": [0, 1], "annotator": 7} for i in range(5)]),
        "native_scores_count.jsonl": _rows(*[{"prompt": f"p{i}", "responses": ["x", "y"], "scores": [1.0]} for i in range(5)]),
        "rating_text_score.jsonl": _rows(*[{"prompt": f"p{i % 3}", "response": f"r{i}", "score": "7"} for i in range(9)]),
        "hh_no_turn.jsonl": _rows(*[{"chosen": f"Human: hi {i}", "rejected": f"Human: bye {i}"} for i in range(5)]),
        "chat_not_assistant.jsonl": _rows(*[{"chosen": [{"role": "user", "content": f"q{i}"}], "rejected": [{"role": "user", "content": "r"}]} for i in range(5)]),
        "no_format.jsonl": _rows(*[{"question": f"q{i}", "answer": "a"} for i in range(5)]),
        "responses_no_ranking.jsonl": _rows(*[{"prompt": f"q{i}", "responses": ["a", "b"]} for i in range(5)]),
        "one.jsonl": _rows(good[0]),
        "long.jsonl": _rows(*good[:5], {"prompt": "p", "chosen": "word " * 3000, "rejected": "b"}),
        "prompts.jsonl": _rows(*[{"prompt": f"tell me about the tea {i} ."} for i in range(20)]),
        "prompts_no_column.jsonl": _rows(*[{"question": f"q{i}"} for i in range(20)]),
        "prompts_empty.jsonl": _rows(*[{"prompt": f"q{i}"} for i in range(5)], {"prompt": "   "}),
        "prompts_one.jsonl": _rows({"prompt": "only one"}),
    }
    for name, text in texts.items():
        (root / name).write_text(text)
    (root / "not_utf8.jsonl").write_bytes(_rows(*good[:3]).encode() + b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "b"}\n')
    (root / "not_utf8.csv").write_bytes(b"prompt,chosen,rejected\np,caf\xe9,b\n")
    (root / "rating_nan.jsonl").write_text("".join(f'{{"prompt": "p{i % 3}", "response": "r{i}", "score": NaN}}\n' for i in range(9)))
    (root / "a_directory").mkdir()
    (root / "a_file").write_text("")
    return root


# (id, overrides (``{files}`` is the directory above), environment, what the message must say)
COMPOSITION = [
    ("algo-unknown", ["algo=nope"], {}, "Could not find 'algo/nope'"),
    ("feedback-unknown", ["feedback=nope"], {}, "Could not find 'feedback/nope'"),
    ("reward-unknown", ["reward=nope"], {}, "Could not find 'reward/nope'"),
    ("task-unknown", ["task=nope"], {}, "Could not find 'task/nope'"),
    ("trainer-unknown", ["trainer=nope"], {}, "Could not find 'trainer/nope'"),
    ("logger-unknown", ["logger=nope"], {}, "Could not find 'logger/nope'"),
    ("seed-text", ["seed=abc"], {}, "Value 'abc' of type 'str' could not be converted to Integer"),
    ("epochs-fraction", ["sft.epochs=1.5"], {}, "could not be converted to Integer"),
    ("lr-text", ["sft.lr=fast"], {}, "could not be converted to Float"),
    ("bool-text", ["sft.enabled=maybe"], {}, "Value 'maybe' is not a valid bool"),
    ("key-unknown", ["sft.nonexistent=1"], {}, "Key 'nonexistent' not in 'SFTConfig'"),
    ("plugin-key-unknown", ["algo.nonexistent=1"], {}, "Key 'nonexistent' not in 'PPOConfig'"),
    ("added-key-unknown", ["+sft.extra=1"], {}, "unknown config key 'sft.extra': SFTConfig has enabled, lr"),
    ("grammar", ["sft.lr=[1"], {}, "no viable alternative at input '[1'"),
    ("launcher-unknown", ["hydra/launcher=nope"], {}, "Could not find 'hydra/launcher/nope'"),
    ("group-deleted", ["~algo"], {}, "no algo is selected (the config group 'algo' was removed or never set): add algo=<name>, one of a2c,"),
]

NON_FINITE = [
    (f"{key}={value}", [f"{key}={value}", *extra], {}, f"config '{key}' is {value}: every number must be finite")
    for key, value, extra in [
        ("sft.lr", "nan", []), ("sft.lr", "inf", []), ("sft.lr", "-inf", []), ("sft.weight_decay", "nan", []),
        ("algo.lr", "nan", []), ("algo.kl_coef", "inf", []), ("algo.sampling.temperature", "nan", []),
        ("algo.sampling.top_p", "nan", []), ("algo.critic_lr", "nan", []), ("algo.clip_range", "inf", []),
        ("algo.gamma", "nan", []), ("eval.sampling.temperature", "inf", []), ("task.length_weight", "nan", []),
        ("reward.lr", "nan", []), ("feedback.beta", "nan", []), ("model.lora.alpha", "inf", []),
        ("algo.beta", "nan", ["algo=dpo"]),
    ]
]

BOUNDS = [
    ("sft.lr=0", ["sft.lr=0"], {}, "sft needs lr > 0"),
    ("sft.lr<0", ["sft.lr=-0.001"], {}, "sft needs lr > 0"),
    ("sft.epochs=0", ["sft.epochs=0"], {}, "epochs=0"),
    ("sft.batch_size=0", ["sft.batch_size=0"], {}, "batch_size=0"),
    ("sft.max_examples=0", ["sft.max_examples=0"], {}, "max_examples=0"),
    ("eval.samples_per_prompt=0", ["eval.samples_per_prompt=0"], {}, "eval.samples_per_prompt must be >= 1, got 0"),
    ("eval.sampling.batch_size=0", ["eval.sampling.batch_size=0"], {}, "batch_size=0"),
    ("eval.sampling.max_new_tokens=0", ["eval.sampling.max_new_tokens=0"], {}, "max_new_tokens=0"),
    ("eval.sampling.top_p=0", ["eval.sampling.top_p=0"], {}, "top_p=0.0"),
    ("eval.sampling.top_p>1", ["eval.sampling.top_p=1.5"], {}, "top_p=1.5"),
    ("eval.sampling.top_k<0", ["eval.sampling.top_k=-1"], {}, "top_k=-1"),
    ("eval.sampling.temperature<0", ["eval.sampling.temperature=-1"], {}, "temperature=-1"),
    ("algo.sampling.batch_size=0", ["algo.sampling.batch_size=0"], {}, "batch_size=0"),
    ("model.dtype", ["model.dtype=float8"], {}, "model.dtype must be float32, bfloat16 or float16, got 'float8'"),
    ("model.lora.r<0", ["model.lora.r=-1"], {}, "r=-1"),
    ("model.lora.dropout=1", ["model.lora.dropout=1.0"], {}, "dropout=1.0"),
    ("data.max_prompt_tokens=0", ["data.max_prompt_tokens=0"], {}, "data.max_prompt_tokens must be >= 1 or null, got 0"),
    ("data.max_response_tokens=0", ["data.max_response_tokens=0"], {}, "data.max_response_tokens must be >= 1 or null, got 0"),
    ("trainer.progress_bar", ["trainer.progress_bar=fancy"], {}, "trainer.progress_bar must be rich, tqdm or none, got 'fancy'"),
    ("trainer.log_every_n_steps=0", ["trainer.log_every_n_steps=0"], {}, "trainer.log_every_n_steps"),
    ("trainer.checkpoint_every_n_steps=0", ["trainer.checkpoint_every_n_steps=0"], {}, "trainer.checkpoint_every_n_steps"),
    ("trainer.devices=0", ["trainer.devices=0"], {}, "trainer.devices=0"),
    ("trainer.precision", ["trainer.precision=bogus"], {}, "trainer.precision=bogus"),
    ("trainer.accelerator", ["trainer.accelerator=abacus"], {}, "trainer.accelerator=abacus"),
    ("trainer.strategy=ddp_spawn", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn"], {},
     "trainer.strategy=ddp_spawn with 2 processes: use one of ddp"),
    ("batch not divisible over ranks", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "sft.batch_size=63"], {},
     "sft.batch_size=63 does not divide over 2 processes"),
    ("rollout not divisible over ranks", ["trainer.accelerator=cpu", "trainer.devices=3", "trainer.strategy=ddp"], {},
     "algo.rollout_batch_size=64 does not divide over 3 processes"),
    ("fsdp with LoRA", ["trainer=fsdp_cpu", "model.lora.r=4"], {}, "trainer.strategy=fsdp with LoRA (model.lora.r > 0)"),
    ("fsdp precision", ["trainer=fsdp_cpu", "trainer.precision=16-mixed"], {}, "trainer.strategy=fsdp: The `ModelParallelStrategy` does not support"),
    ("trainer.zero_stage", ["trainer.zero_stage=4"], {}, "trainer.zero_stage must be 1, 2 or 3, got 4"),
    ("deepspeed with LoRA", ["trainer=deepspeed_cpu", "model.lora.r=4"], {}, "trainer.strategy=deepspeed with LoRA (model.lora.r > 0)"),
    ("Lightning's deepspeed", ["trainer.strategy=deepspeed_stage_3"], {},
     "trainer.strategy=deepspeed_stage_3 is Lightning's own; use trainer.strategy=deepspeed with trainer.zero_stage=1|2|3"),
    ("deepspeed precision", ["trainer=deepspeed_cpu", "trainer.precision=64-true"], {},
     "trainer.strategy=deepspeed: `Trainer(strategy='deepspeed', precision='64-true')` is not supported"),
    ("loop with several processes", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "loop.rounds=2"], {},
     "loop.rounds=2 runs in one process for now"),
    ("logger.name", ["logger.name=mlflow"], {}, "logger.name must be wandb, csv or tensorboard, got 'mlflow'"),
    ("logger.mode", ["logger=wandb", "logger.mode=bogus"], {}, "logger.mode must be online, offline, disabled or null, got 'bogus'"),
    ("loop.rounds=0", ["loop.rounds=0"], {}, "loop.rounds must be an integer >= 1, got 0"),
    ("stop_after", ["stop_after=policy"], {}, "stop_after must be one of"),
    ("seed<0", ["seed=-1"], {}, "seed must be an integer in [0, 2**31), got -1"),
    ("sft.weight_decay<0", ["sft.weight_decay=-0.1"], {}, "weight_decay=-0.1"),
    ("reward.weight_decay<0", ["reward.weight_decay=-0.1"], {}, "weight_decay=-0.1"),
    ("dpo.weight_decay<0", ["algo=dpo", "algo.weight_decay=-0.1"], {}, "algo.weight_decay and algo.simpo_gamma must be >= 0"),
    ("task.on_topic_probability>1", ["task.on_topic_probability=1.5"], {}, "task.on_topic_probability must be in [0, 1], got 1.5"),
    ("task.n_layer=0", ["task.n_layer=0"], {}, "task.n_layer must be >= 1, got 0"),
    ("task.n_embd-n_head", ["task.n_head=3"], {}, "task.n_embd (64) must be divisible by task.n_head (3)"),
    ("task.n_positions", ["task.n_positions=4"], {}, "task.n_positions >= 8"),
    ("task.heldout_fraction=0", ["task.heldout_fraction=0"], {}, "task.heldout_fraction must be in (0, 1), got 0"),
    ("task.heldout_fraction=1", ["task.heldout_fraction=1"], {}, "task.heldout_fraction must be in (0, 1), got 1"),
    ("reward.epochs=0", ["reward.epochs=0"], {}, "reward needs lr > 0, epochs >= 1"),
    ("reward.batch_size=0", ["reward.batch_size=0"], {}, "batch_size=0"),
    ("reward.lr=0", ["reward.lr=0"], {}, "lr=0"),
    ("feedback.rounds=0", ["feedback.rounds=0"], {}, "rounds >= 1"),
    ("feedback.responses_per_prompt=1", ["feedback.responses_per_prompt=1"], {}, "responses_per_prompt >= 2"),
    ("feedback.labellers twice", ["feedback=human", "feedback.labellers=[ann,ann]"], {}, "labeller 'ann' is listed twice"),
    ("feedback.public_url", ["feedback=human", "feedback.public_url=label.example.org"], {},
     "bad value in config 'feedback': public_url=label.example.org: give the address labellers open"),
    ("feedback.host", ["feedback=human", "feedback.host=no-such-host.invalid", "feedback.port=0", "feedback.db={files}/labels.db"], {},
     "feedback.host=no-such-host.invalid: not an address"),
    ("feedback.num_annotators=0", ["feedback.num_annotators=0"], {}, "num_annotators >= 1"),
    ("feedback.beta=0", ["feedback.beta=0"], {}, "beta > 0"),
    ("algo.rollout_batch_size=0", ["algo.rollout_batch_size=0"], {}, "rollout_batch_size"),
    ("algo.ppo_epochs=0", ["algo.ppo_epochs=0"], {}, "ppo_epochs"),
    ("dpo.beta=0", ["algo=dpo", "algo.beta=0"], {}, "beta"),
    ("dpo.loss", ["algo=dpo", "algo.loss=kto"], {}, "kto"),
    ("best_of_n.n=0", ["algo=best_of_n", "algo.n=0"], {}, "n"),
]

COMBINATIONS = [
    ("objective-not-a-figure", ["objective=accuracy"], {}, "objective=accuracy names no figure: a key of metrics.json starts with one of eval"),
    ("unused-reward", ["algo=dpo", "reward.lr=1e-4"], {}, "'reward.lr=1e-4': algo=dpo does not use a reward"),
    ("unused-eval", ["stop_after=sft", "eval.samples_per_prompt=2"], {}, "'eval' is never used"),
    ("loop-best-of-n", ["algo=best_of_n", "loop.rounds=2"], {}, "loop.rounds=2: algo=best_of_n trains no policy"),
    ("loop-stop-after", ["stop_after=sft", "loop.rounds=2"], {}, "cannot be combined with stop_after=sft"),
    ("loop-lora", ["loop.rounds=2", "model.lora.r=4"], {}, "loop.rounds=2 with model.lora is not supported"),
    ("feedback-dataset-no-path", DPO_FILE, {}, "feedback=dataset needs feedback.path=<file>"),
    ("task-dataset-no-path", ["task=dataset", "model.name_or_path={files}/model"], {}, "task=dataset needs task.path=<file>"),
    ("model-missing", ["model.name_or_path={files}/no_model"], {}, "no_model"),
    ("model-not-causal", ["model.name_or_path={files}/bert"], {},
     "model.name_or_path={files}/bert: a bert model (saved as BertModel) is not a causal language model with a generation head"),
    ("model-vocabulary", ["model.name_or_path={files}/small_vocab"], {}, "but the model's embedding only"),
    ("max-new-tokens-fill-context", ["eval.sampling.max_new_tokens=64"], {}, "max_new_tokens=64 (algo.sampling or eval.sampling) leaves no room"),
]

ENVIRONMENT = [
    ("WANDB_MODE-bogus", ["logger=wandb"], {"WANDB_MODE": "bogus"}, "environment variable WANDB_MODE='bogus' is not a wandb mode"),
    ("wandb-online-no-key", ["logger=wandb", "logger.mode=online"], {"WANDB_MODE": None}, "wandb would log online (logger.mode=online) but no API key"),
    ("WANDB_MODE-online-no-key", ["logger=wandb"], {"WANDB_MODE": "online"}, "wandb would log online (WANDB_MODE=online) but no API key"),
    ("cache-dir-under-a-file", ["cache_dir={files}/a_file/cache"], {}, "cache_dir={files}/a_file/cache: cannot write artifacts there"),
    ("started-by-torchrun", ["trainer=ddp_cpu"], {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"},
     "this process was started as rank 1 of 2 by another launcher (torchrun, srun with several tasks, ...)"),
]

DATA = [
    (name, [*DPO_FILE, f"feedback.path={{files}}/{file}", *extra], {}, message)
    for name, file, extra, message in [
        ("not-utf8", "not_utf8.jsonl", [], "{files}/not_utf8.jsonl:4: not UTF-8 text (byte 0xe9"),
        ("not-utf8-csv", "not_utf8.csv", [], "{files}/not_utf8.csv:2: not UTF-8 text (byte 0xe9 at column 6)"),
        ("malformed-json", "malformed.jsonl", [], "{files}/malformed.jsonl:31: not valid JSON"),
        ("not-an-object", "array_line.jsonl", [], "{files}/array_line.jsonl:4: expected a JSON object, got list"),
        ("column-type-change", "type_change.jsonl", [], "{files}/type_change.jsonl:4: field 'prompt' is a int here but a str"),
        ("empty-file", "empty.jsonl", [], "{files}/empty.jsonl: the file is empty"),
        ("blank-file", "blank.jsonl", [], "{files}/blank.jsonl: the file is empty"),
        ("missing-file", "missing.jsonl", [], "feedback.path: file '{files}/missing.jsonl' not found"),
        ("wrong-extension", "wrong_ext.txt", [], "is not a .jsonl, .json, .csv or .parquet file"),
        ("plain-directory", "a_directory", [], "is a directory but not one written by datasets' save_to_disk"),
        ("pair-identical", "pair_identical.jsonl", [], "{files}/pair_identical.jsonl:6: malformed preference record: identical chosen and rejected"),
        ("pair-empty-text", "pair_empty.jsonl", [], "{files}/pair_empty.jsonl:6: malformed preference record: empty 'chosen'"),
        ("pair-not-text", "pair_not_text.jsonl", [], "{files}/pair_not_text.jsonl:2: field 'chosen' is a str here but a list on an earlier line"),
        ("pair-empty-prompt", "pair_empty_prompt.jsonl", [], "{files}/pair_empty_prompt.jsonl:6: malformed preference record: empty 'prompt'"),
        ("native-identical", "native_identical.jsonl", [], "native_identical.jsonl:1: malformed preference record: all responses are identical"),
        ("native-empty-response", "native_empty.jsonl", [], "native_empty.jsonl:1: malformed preference record: response 0 is empty"),
        ("native-ranking", "native_ranking.jsonl", [], "native_ranking.jsonl:1: malformed preference record: 'ranking' [0, 0] is not a permutation"),
        ("native-unknown-field", "native_unknown.jsonl", [], "native_unknown.jsonl:1: malformed preference record: unknown field(s) ['votes']"),
        ("native-boolean-ranking", "native_bool_ranking.jsonl", [], "native_bool_ranking.jsonl:1: malformed preference record: 'ranking' must be a list of response indices (integers), got [True, False]"),
        ("native-text-scores", "native_text_scores.jsonl", [], "native_text_scores.jsonl:1: malformed preference record: 'scores' must be a list of finite numbers, got ['good', 1.0]"),
        ("native-annotator-type", "native_annotator.jsonl", [], "native_annotator.jsonl:1: malformed preference record: 'annotator' must be a string"),
        ("native-one-response", "native_single.jsonl", [], "native_single.jsonl:1: malformed preference record: a ranking needs at least 2 responses"),
        ("native-scores-count", "native_scores_count.jsonl", [], "native_scores_count.jsonl:1: malformed preference record: 1 scores for 2 responses"),
        ("hh-no-assistant-turn", "hh_no_turn.jsonl", [], "hh_no_turn.jsonl:1: malformed preference record: no shared"),
        ("chat-no-reply", "chat_not_assistant.jsonl", [], "chat_not_assistant.jsonl:1: malformed preference record"),
        ("no-format", "no_format.jsonl", [], "no_format.jsonl: columns ['answer', 'question'] match no preference format"),
        ("one-record", "one.jsonl", [], "one.jsonl: 1 record(s) cannot be split into training and held-out records"),
        ("over-long", "long.jsonl", [], "long.jsonl:6): preference response of"),
        ("format-unknown", "good.jsonl", ["feedback.format=yaml"], "feedback.format must be auto or one of"),
        ("on-bad-record", "good.jsonl", ["feedback.on_bad_record=ignore"], "feedback.on_bad_record must be error or skip, got 'ignore'"),
        ("heldout-fraction", "good.jsonl", ["feedback.heldout_fraction=1.0"], "feedback.heldout_fraction must be in (0, 1)"),
        ("column-mapped-to-nothing", "good.jsonl", ["feedback.columns.prompt=question"], "feedback.columns.prompt=question, but the file has no column 'question' (it has chosen, prompt, rejected)"),
    ]
] + [
    ("rating-text-score", ["reward=pointwise", "feedback=dataset", "feedback.path={files}/rating_text_score.jsonl"], {},
     "rating_text_score.jsonl:1: malformed preference record: 'score' must be a finite number, got '7'"),
    ("rating-nan-score", ["reward=pointwise", "feedback=dataset", "feedback.path={files}/rating_nan.jsonl"], {},
     "rating_nan.jsonl:1: malformed preference record: 'score' must be a finite number, got nan"),
    ("ratings-for-pairwise-only-data", ["reward=pointwise", "feedback=dataset", "feedback.path={files}/good.jsonl"], {},
     "the record has no 'scores', which this reward model trains on"),
] + [
    (name, ["task=dataset", f"task.path={{files}}/{file}", "model.name_or_path={files}/model", "algo=best_of_n", "reward=rule",
            "+reward.kwargs.target=tea"], {}, message)
    for name, file, message in [
        ("task-missing-file", "nope.jsonl", "task.path: file '{files}/nope.jsonl' not found"),
        ("task-not-utf8", "not_utf8.jsonl", "{files}/not_utf8.jsonl:4: not UTF-8 text"),
        ("task-no-prompt-column", "prompts_no_column.jsonl", "prompts_no_column.jsonl"),
        ("task-empty-prompt", "prompts_empty.jsonl", "prompts_empty.jsonl:6"),
        ("task-one-prompt", "prompts_one.jsonl", "1 distinct prompt(s) cannot be split"),
        # a preference file read as the task: the task's key decides, not feedback's
        ("task-preference-file-bad-row", "pair_identical.jsonl",
         "pair_identical.jsonl:6: malformed preference record: identical chosen and rejected responses (task.on_bad_record=skip skips such rows)"),
        ("task-preference-file-no-format", "responses_no_ranking.jsonl", "match no preference format: native (prompt, responses, ranking|scores)"
         ", pairwise (prompt, chosen, rejected), hh (chosen, rejected transcripts), chat (chosen, rejected message lists) or rating "
         "(prompt, response, score). Map other names with task.columns.<name>=<column>"),
    ]
]

TABLE = [*COMPOSITION, *NON_FINITE, *BOUNDS, *COMBINATIONS, *ENVIRONMENT, *DATA]


@pytest.mark.parametrize("name,overrides,env,message", TABLE, ids=[case[0] for case in TABLE])
def test_a_bad_input_stops_before_training_with_one_message(name, overrides, env, message, files, tmp_path_factory, tmp_path, monkeypatch, capsys, no_training):
    cache = tmp_path_factory.getbasetemp() / "bad_inputs_cache"  # the toy base model is built once for the table
    tiny = [a for a in TINY if not a.startswith("task.")] if "task=dataset" in overrides else TINY
    argv = [*tiny, f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}", *(o.format(files=files) for o in overrides)]
    argv = [a for i, a in enumerate(argv) if not (a.startswith("cache_dir=") and any(o.startswith("cache_dir=") for o in argv[i + 1:]))]
    code, err = run_main(argv, monkeypatch, capsys, env)
    assert code == 2, err[-2000:]
    assert message.format(files=files) in err, err[-2000:]
    assert "Traceback" not in err


def test_a_labelling_port_in_use_is_refused_before_training(tmp_path, monkeypatch, capsys, no_training):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_main([*TINY, "feedback=human", "feedback.bot_labellers=1", f"feedback.port={port}", f"feedback.db={tmp_path / 'labels.db'}",
                              f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2 and f"feedback.port={port}: cannot serve the labelling app on 127.0.0.1:{port}" in err, err[-2000:]


@pytest.mark.parametrize("argv, message", [
    (["create", "--redundancy", "0"], "label create: redundancy must be a whole number >= 1, got 0"),
    (["create", "--expert-threshold", "nan"], "label create: expert_threshold is an agreement between 0 and 1, got nan"),
    (["status"], "no such database"),
])
def test_label_commands_name_a_bad_argument(argv, message, tmp_path, monkeypatch, capsys):
    code, err = run_main(["label", *argv, "--db", str(tmp_path / "labels.db")], monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "labels.db.tokens.json").exists()


@pytest.mark.parametrize("host, port, message", [
    ("127.0.0.1", 70000, "feedback.port=70000: a port is a number from 0 to 65535"),
    ("127.0.0.1", -1, "feedback.port=-1: a port is a number from 0 to 65535"),
    ("no-such-host.invalid", 0, "feedback.host=no-such-host.invalid: not an address"),
    ("192.0.2.1", 0, "feedback.host=192.0.2.1: not an address of this machine"),  # TEST-NET-1: never this machine's
])
def test_the_labelling_address_blames_the_key_at_fault(host, port, message):
    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.labelling.addresses import check_address

    with pytest.raises(RlhfLabError, match=message.replace(".", r"\.")):
        check_address(host, port, "feedback.host", "feedback.port")
    check_address("127.0.0.1", 0, "feedback.host", "feedback.port")  # any free port of this machine: fine


def test_the_public_origin_is_what_a_browser_sends():
    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.labelling.addresses import public_origin

    assert public_origin("HTTPS://Label.Example.org:443/labels/", "k") == "https://label.example.org"
    assert public_origin("http://[::1]:8765", "k") == "http://[::1]:8765"
    for bad in ("label.example.org", "ftp://label.example.org", "http://", "http://host:99999"):
        with pytest.raises(RlhfLabError, match=f"k={bad}"):
            public_origin(bad, "k")


def _dump(db: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(db) as connection:
        return list(connection.iterdump())


def _items(path: Path, *rows) -> str:
    path.write_bytes(rows[0] if isinstance(rows[0], bytes) else _rows(*rows).encode())
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["create", "--redundancy", "3"], "already holds this campaign, created with {\"aggregation\": \"majority\""),
    (["add-labeller", "--name", " ann"], "argument --name: ' ann': give a name without leading or trailing spaces"),
    (["add-items", "--file", "{tmp}/gold.jsonl"], "gold.jsonl:2: 'gold' must rank the response indices 0-1, each once, best first; got [0, \"1\"]"),
    (["add-items", "--file", "{tmp}/gold_twice.jsonl"], "gold_twice.jsonl:1: 'gold' must rank the response indices 0-1, each once, best first; got [1, 1]"),
    (["add-items", "--file", "{tmp}/key.jsonl"], "key.jsonl:1: 'key' must be a non-empty text; got [1]"),
    (["add-items", "--file", "{tmp}/binary.jsonl"], "binary.jsonl:2: not UTF-8 text"),
    (["add-items", "--file", "{tmp}"], "is a directory but not one written by datasets' save_to_disk"),
    (["add-items", "--file", "{tmp}/good.jsonl", "--batch", ""], "argument --batch: '': give a name"),
    (["serve", "--port", "70000"], "argument --port: '70000' is not a port (a number from 0 to 65535"),
    (["serve", "--host", "no-such-host.invalid"], "--host=no-such-host.invalid: not an address"),
    (["serve", "--public-url", "label.example.org"], "--public-url=label.example.org: give the address labellers open"),
    (["serve", "--public-url", "ftp://label.example.org"], "--public-url=ftp://label.example.org: give the address labellers open"),
    (["export", "--out", "{tmp}/no/such/dir/out.jsonl"], "/no/such/dir/out.jsonl: no directory"),
    (["export", "--out", "{tmp}"], ": a directory; give the path of the JSONL file to write"),
    (["export", "--out", "{tmp}/out.jsonl", "--batch", "mian"], "--batch mian: no such batch in campaign 'default' (batches: main)"),
], ids=["recreate", "name", "gold", "gold-twice", "key", "binary", "dir", "batch", "port", "host", "public-url", "public-url-scheme", "out-dir", "out-is-dir", "export-batch"])
def test_every_label_command_names_a_bad_argument_before_it_writes(argv, message, tmp_path, monkeypatch, capsys):
    db = tmp_path / "labels.db"
    good = {"prompt": "p", "responses": ["a", "b"], "gold": [1, 0]}
    _items(tmp_path / "good.jsonl", good)
    _items(tmp_path / "gold.jsonl", good, {**good, "gold": [0, "1"]})
    _items(tmp_path / "gold_twice.jsonl", {**good, "gold": [1, 1]})
    _items(tmp_path / "key.jsonl", {**good, "key": [1]})
    _items(tmp_path / "binary.jsonl", _rows(good).encode() + b"\xff\xfe")
    assert run_main(["label", "create", "--db", str(db)], monkeypatch, capsys)[0] == 0
    assert run_main(["label", "add-items", "--db", str(db), "--file", str(tmp_path / "good.jsonl")], monkeypatch, capsys)[0] == 0
    before = _dump(db)
    code, err = run_main(["label", *(a.format(tmp=tmp_path) for a in argv), "--db", str(db)], monkeypatch, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert _dump(db) == before and not (tmp_path / "out.jsonl").exists()


def test_resume_names_what_it_cannot_resume(tmp_path, monkeypatch, capsys, no_training):
    code, err = run_main([f"resume={tmp_path / 'nowhere'}"], monkeypatch, capsys)
    assert code == 2 and f"resume={tmp_path / 'nowhere'}: no run there" in err
    code, err = run_main([f"resume={tmp_path}", "seed=1"], monkeypatch, capsys)
    assert code == 2 and "resume=<run dir> takes no other argument" in err


def test_deepspeed_missing_is_named_with_how_to_install_it(tmp_path, monkeypatch, capsys, no_training):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a))
    code, err = run_main([*TINY, "trainer=deepspeed_cpu", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2 and 'trainer.strategy=deepspeed needs DeepSpeed: pip install -e ".[deepspeed]"' in err, err[-2000:]


def test_the_table_has_at_least_eighty_cases():
    assert len(TABLE) >= 80 and len({case[0] for case in TABLE}) == len(TABLE)


def test_a_traceback_only_when_asked_for(files, tmp_path, monkeypatch, capsys, no_training):
    argv = [*TINY, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "sft.lr=nan"]
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["rlhf_lab", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" in err and "config 'sft.lr' is nan" in err


def test_a_run_directory_in_use_is_refused_and_its_outputs_are_untouched(tmp_path, monkeypatch, capsys, no_training):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"eval/ppo/gold_reward": 1.5}\n')
    (run_dir / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "earlier"}))
    code, err = run_main([*TINY, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code == 2 and f"run directory {run_dir} is in use by another run (pid {os.getpid()}" in err
    assert (run_dir / "metrics.json").read_text() == '{"eval/ppo/gold_reward": 1.5}\n'


class RaisesWhenRegistering:
    @hookimpl
    def rlhf_lab_register_algorithms(self, register):
        raise ImportError("No module named 'flash_attn'")


class RaisesInCallbacksHook:
    @hookimpl
    def rlhf_lab_callbacks(self, cfg, stage):
        raise KeyError("wandb_project")


@pytest.mark.parametrize(
    "plugin,message",
    [
        (RaisesWhenRegistering(), "failed in its hook rlhf_lab_register_algorithms: ImportError: No module named 'flash_attn'"),
        (RaisesInCallbacksHook(), "failed in its hook rlhf_lab_callbacks: KeyError: 'wandb_project'"),
    ],
    ids=["registration", "run-phase"],
)
def test_a_plugin_that_raises_is_named(plugin, message, tmp_path, monkeypatch, capsys, no_training):
    build = plugin_manager.build_plugin_manager
    monkeypatch.setattr(plugin_manager, "_PM", None)
    monkeypatch.setattr(plugin_manager, "build_plugin_manager", lambda **kw: build(load_entry_points=False, extra_plugins=(plugin,)))
    code, err = run_main([*TINY, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 2, err[-2000:]
    assert f"plugin '{plugin_manager.get_plugin_manager().get_name(plugin)}'" in err if plugin_manager._PM else "plugin '" in err
    assert message in err and "Traceback" not in err
    monkeypatch.setattr(plugin_manager, "_PM", None)
    monkeypatch.setattr(plugin_manager, "build_plugin_manager", build)
    register_engine_schemas()


class RaisesForThePolicyStageOnly:
    @hookimpl
    def rlhf_lab_callbacks(self, cfg, stage):
        if stage == "policy":
            raise KeyError("wandb_project")
        return []


class ReturnsAClassNotACallback:
    @hookimpl
    def rlhf_lab_callbacks(self, cfg, stage):
        from lightning.pytorch.callbacks import ModelCheckpoint

        return [ModelCheckpoint]


class TaskFactoryRaises:
    @hookimpl
    def rlhf_lab_register_tasks(self, register):
        from dataclasses import dataclass

        @dataclass
        class Schema:
            name: str = "fragile"

        def factory(cfg, seed):
            raise ValueError("column 'prompt' not found in prompts.csv")

        register("fragile", factory, Schema)


@pytest.mark.parametrize(
    "plugin,extra,message",
    [
        (RaisesForThePolicyStageOnly(), [], "failed in its hook rlhf_lab_callbacks: KeyError: 'wandb_project'"),
        (ReturnsAClassNotACallback(), [], "hook rlhf_lab_callbacks(cfg=..., stage=...) returned <class "
                                          "'lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint'> (type), "
                                          "not a list of lightning.pytorch.Callback; implemented by: "),
        (TaskFactoryRaises(), ["task=fragile"], "task 'fragile' (plugin "),
    ],
    ids=["later-stage-hook", "hook-returns-a-class", "factory-raises"],
)
def test_plugin_hooks_and_factories_are_called_before_any_training(plugin, extra, message, tmp_path, monkeypatch, capsys, no_training):
    build = plugin_manager.build_plugin_manager
    monkeypatch.setattr(plugin_manager, "_PM", None)
    monkeypatch.setattr(plugin_manager, "build_plugin_manager", lambda **kw: build(load_entry_points=False, extra_plugins=(plugin,)))
    try:
        argv = [*(a for a in TINY if not a.startswith("task.") or not extra), *extra]
        code, err = run_main([*argv, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    finally:
        monkeypatch.setattr(plugin_manager, "_PM", None)
        monkeypatch.setattr(plugin_manager, "build_plugin_manager", build)
        register_engine_schemas()
    # no_training: a Trainer.fit before the refusal would have failed the run differently
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert message in err, err[-2000:]
    if extra:
        assert "its factory failed: ValueError: column 'prompt' not found in prompts.csv" in err


def test_a_loggers_hook_that_returns_no_logger_is_named(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.loggers import build_loggers

    class ReturnsAPath:
        @hookimpl
        def rlhf_lab_loggers(self, stage, run_dir):
            return [run_dir / "logs"]

    monkeypatch.setattr(plugin_manager, "_PM", plugin_manager.build_plugin_manager(load_entry_points=False, extra_plugins=(ReturnsAPath(),)))
    cfg = OmegaConf.create({"logger": {"name": "csv"}, "seed": 0})
    with pytest.raises(RlhfLabError, match=r"hook rlhf_lab_loggers\(.*\) returned PosixPath\('.*logs'\) \(PosixPath\), not a list of "
                                           r"lightning.pytorch.loggers.Logger; implemented by: "):
        build_loggers(cfg, "sft", tmp_path, "group")
    monkeypatch.setattr(plugin_manager, "_PM", None)


@pytest.mark.parametrize("function, message", [
    ("operator:concat", "returned 'What is two plus two?Two plus two is four.' (str); a reward function returns a finite number"),
    ("builtins:print", "returned None (NoneType)"),
    ("operator:eq", "returned False (bool)"),  # a bool is an int to Python, not a reward
    ("operator:truediv", "raised TypeError: unsupported operand type(s) for /: 'str' and 'str'"),
])
def test_a_rule_reward_that_returns_no_number_is_named_before_any_work(function, message, refused, tmp_path):
    code, err = refused([*TINY_UPSTREAM, *TINY_ONLINE, "algo=rloo", "reward=rule", f"reward.function={function}",
                         f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert f"reward.function {function} on prompt 'What is two plus two?' and response 'Two plus two is four.' {message}" in err, err[-2000:]


@pytest.mark.parametrize("value, shown", [
    ("good", "'good' (str)"), ((1.0, 2.0), "(1.0, 2.0) (tuple)"), (None, "None (NoneType)"), (True, "True (bool)"),
    (float("nan"), "nan (float)"), (float("-inf"), "-inf (float)"), (10**400, "(int)"),
])
def test_rule_score_refuses_anything_but_a_finite_number(value, shown):
    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.rewards.scoring import rule_score

    with pytest.raises(RlhfLabError, match="reward.function mod:fn on prompt 'p' and response 'r' returned") as refused:
        rule_score(lambda prompt, response: value, "p", "r", {}, name="mod:fn")
    assert shown in str(refused.value)


def test_rule_score_passes_numbers_and_keyword_arguments_through():
    import numpy as np

    from rlhf_lab.rewards.scoring import rule_score

    assert rule_score(lambda p, r, target: len(r) - target, "p", "four", {"target": 1}) == 3.0
    score = rule_score(lambda p, r: np.float32(0.25), "p", "r", {})
    assert score == 0.25 and type(score) is float


def test_a_rule_reward_that_fails_mid_run_names_the_function_the_input_and_the_value():
    import torch

    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.rewards.function import RuleReward

    class Words:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids)

    def picky(prompt, response):
        return 1.0 if "w3" not in response else "bad"

    batch = {"prompt_len": 2, "input_ids": torch.tensor([[1, 2, 4, 5], [1, 2, 3, 5]]), "attention_mask": torch.ones(2, 4, dtype=torch.long)}
    with pytest.raises(RlhfLabError, match=r"picky on prompt 'w1 w2' and response 'w3 w5' returned 'bad' \(str\)"):
        RuleReward(picky, Words())(batch)


@pytest.mark.parametrize("failure, message", [
    (lambda path: OSError(28, "No space left on device", str(path)), "is full"),
    (lambda path: RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })"),
     "is full"),
    (lambda path: OSError(30, "Read-only file system", str(path)), "is read-only"),
    (lambda path: MemoryError(), "the machine ran out of memory"),
])
def test_a_full_disk_or_exhausted_memory_mid_run_is_one_message_and_exit_1(failure, message, tmp_path, monkeypatch, capsys):
    """The checkpoint write fails as a full, read-only disk or exhausted memory would make it fail: one
    line naming the path and what to do, exit 1, no traceback, and no metrics.json."""
    from rlhf_lab.training import LastCheckpoint

    def fail(self, trainer):
        raise failure(self.directory / "last.ckpt.tmp")

    monkeypatch.setattr(LastCheckpoint, "save", fail)
    code, err = run_main([*TINY, "stop_after=sft", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code == 1 and "Traceback" not in err, err[-2000:]
    assert "rlhf_lab: error: " in err and message in err, err[-2000:]
    if "memory" not in message:
        assert "MB free there now" in err and "run the same command again" in err
    assert not (tmp_path / "run" / "metrics.json").exists()
