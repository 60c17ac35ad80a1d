"""task=dataset: lengths, epochs and episodes read off the user's data for what the command line leaves unset."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rlhf_lab.data import encode_prompt, encode_response
from rlhf_lab.records import PreferenceRecord
from rlhf_lab.run import sizing


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from rlhf_lab.models.loading import load_tokenizer
    from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

    out = tmp_path_factory.mktemp("toy_base")
    make_toy_task(ToyTaskConfig(num_sft_examples=50), seed=0).build_base_model(out)
    return out, load_tokenizer(str(out))


def _plan(*overrides):
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from rlhf_lab.config import register_engine_schemas
    from rlhf_lab.plugin_manager import get_plugin_manager
    from rlhf_lab.run.plan import make_plan

    get_plugin_manager()
    register_engine_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="rlhf_lab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return make_plan(cfg, get_plugin_manager().registry, tuple(overrides))


def _task(n: int, sized: bool = True):
    """n prompts of 1..n words and n demonstrations of 1..n words (each word one token of the toy tokenizer)."""
    prompts = [" ".join(["cat"] * k) + " ?" for k in range(1, n + 1)]
    demos = [(p, " ".join(["lovely"] * k)) for k, p in enumerate(prompts, start=1)]
    return SimpleNamespace(train_prompts=prompts[: n - 10], eval_prompts=prompts[n - 10:], sft_train=demos[: n - 10], sft_eval=demos[n - 10:],
                           sized_to_data=sized)


def test_lengths_epochs_and_episodes_by_hand(toy):
    _, tok = toy
    task = _task(100)
    # the toy tokenizer: one token a word, so prompt k has k + c_p tokens and response k has k + c_r (EOS included)
    c_p, c_r = len(encode_prompt(tok, task.train_prompts[0])) - 1, len(encode_response(tok, task.sft_train[0][1])) - 1
    sized = {s.key: s.value for s in sizing.sized_settings(_plan("task=dataset", "task.path=x.jsonl"), task, tok, positions=1024)}
    assert sized["algo.sampling.max_new_tokens"] == sized["eval.sampling.max_new_tokens"] == 95 + c_r  # 95th of 1..100
    assert sized["data.max_prompt_tokens"] == 99 + c_p and sized["data.truncate"] is True
    # 90 demonstrations in batches of 64: 2 steps an epoch; 2 epochs would be 4 steps, so raised to the toy default of 8
    assert sized["sft.epochs"] == 8
    # The simulated annotators label each of the 90 training prompts 6 times (feedback.rounds): 540 records in
    # batches of 32 are 17 steps an epoch, so 3 epochs make 50 steps.
    assert sized["reward.epochs"] == 3
    assert sized["algo.total_episodes"] == 64  # one pass over 90 prompts, in whole rollouts of 64
    # few positions: responses at most half of them, prompts within what they leave
    small = {s.key: s.value for s in sizing.sized_settings(_plan("task=dataset", "task.path=x.jsonl"), task, tok, positions=64)}
    assert small["algo.sampling.max_new_tokens"] == 32 and small["data.max_prompt_tokens"] == 32


def test_epochs_rule():
    assert sizing._epochs(2, 8, 100_000, 64)[0] == 2  # plenty of steps: the recipe's epochs
    assert sizing._epochs(1, 12, 32 * 10, 32)[0] == 5  # 10 steps an epoch: 5 epochs make 50 steps
    assert sizing._epochs(1, 3, 32, 32)[0] == 3  # never above the cap


def test_what_the_user_sets_is_kept_and_the_toy_task_is_not_sized(toy):
    _, tok = toy
    plan = _plan("task=dataset", "task.path=x.jsonl", "sft.epochs=3", "algo.sampling.max_new_tokens=40", "algo.total_episodes=128")
    sized = {s.key: s.value for s in sizing.sized_settings(plan, _task(100), tok, positions=1024)}
    assert "sft.epochs" not in sized and "algo.sampling.max_new_tokens" not in sized and "algo.total_episodes" not in sized
    assert "eval.sampling.max_new_tokens" in sized
    # the prompts leave room for the longest response the run samples: the user's 40 is shorter than the sized one
    assert sized["data.max_prompt_tokens"] == min(sized["data.max_prompt_tokens"], 1024 - sized["eval.sampling.max_new_tokens"])
    dpo = {s.key: s.value for s in sizing.sized_settings(_plan("task=dataset", "task.path=x.jsonl", "algo=dpo"), _task(100), tok, 1024)}
    # 90 prompts x 6 rounds x 6 pairs of 4 candidates = 3240 pairs: 51 steps in one epoch, the recipe's one
    assert dpo["algo.epochs"] == 1 and "algo.total_episodes" not in dpo and "algo.sampling.max_new_tokens" not in dpo
    assert sizing.sized_settings(_plan(), _task(100, sized=False), tok, positions=1024) == []


def test_a_preference_file_sizes_dpo_by_its_pairs_and_lora_gets_ten_times_each_rate(toy):
    _, tok = toy
    records = [PreferenceRecord("p", ["a", "b", "c"], ranking=[0, 1, 2])] * 20 + [PreferenceRecord("q", ["a", "b"], ranking=[1, 0])] * 10

    class File:
        def collect(self, prompts, candidates, kind, seed, split="train"):
            assert prompts is None and split == "train"
            return records

    plan = _plan("task=dataset", "task.path=x.jsonl", "algo=dpo", "feedback=dataset", "feedback.path=x.jsonl", "algo.batch_size=1")
    sized = {s.key: s.value for s in sizing.sized_settings(plan, _task(100), tok, 1024, feedback=File())}
    # 20 x 3 + 10 x 1 = 70 pairs (not 30 records) one at a time: 70 steps an epoch, one epoch is enough.
    assert sized["algo.epochs"] == 1 and "algo.lr" not in sized
    plan = _plan("task=dataset", "task.path=x.jsonl", "algo=dpo", "feedback=dataset", "feedback.path=x.jsonl", "algo.batch_size=70",
                 "algo.epochs=9", "model.lora.r=8", "sft.lr=0.002")
    sized = {s.key: s.value for s in sizing.sized_settings(plan, _task(100), tok, 1024, feedback=File())}
    assert "algo.epochs" not in sized and sized["algo.lr"] == pytest.approx(10 * plan.settings["algo"].lr)
    assert "sft.lr" not in sized  # the user's own rate is kept
    ppo = _plan("task=dataset", "task.path=x.jsonl", "model.lora.r=8")
    sized = {s.key: s.value for s in sizing.sized_settings(ppo, _task(100), tok, 1024)}
    assert sized["sft.lr"] == pytest.approx(10 * ppo.settings["sft"].lr) and sized["reward.lr"] == pytest.approx(10 * ppo.settings["reward"].lr)
    assert sized["algo.lr"] == pytest.approx(10 * ppo.settings["algo"].lr)


def test_cli_a_dataset_run_starts_from_sized_settings_and_prints_them(toy, tmp_path, refused, monkeypatch):
    import lightning.pytorch as pl

    model_dir, tok = toy
    rows = [{"prompt": "tell me about the cat " * (1 + i % 5) + "?", "response": "the cat is lovely ." * (1 + i % 3)} for i in range(40)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = {}

    def trap(trainer, *args, **kwargs):
        seen["max_epochs"] = trainer.max_epochs
        raise AssertionError("stop before training")

    monkeypatch.setattr(pl.Trainer, "fit", trap)
    code, err = refused(["task=dataset", f"task.path={data}", f"model.name_or_path={model_dir}", "logger=csv", "stop_after=sft",
                         f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"])
    log = (tmp_path / "run" / "rlhf_lab.log").read_text()
    assert "settings sized to the data" in log and "sft.epochs=8  (32 items, 1 step an epoch)" in log
    assert seen["max_epochs"] == 8  # the SFT stage trains with the sized value
    # 40 rows of 5 prompts, one prompt (8 rows) held out; responses of 1-3 sentences, the longest the 95th percentile
    longest = max(len(encode_response(tok, r["response"])) for r in rows)
    assert f"eval.sampling.max_new_tokens={max(16, longest)}  (95th percentile of 40 demonstration responses)" in log
