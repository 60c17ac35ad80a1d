"""A user's own model and files through the real CLI: task=dataset feedback=dataset, stage by stage."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rlhf_lab.tasks.toy import NEGATIVE, NOUNS, POSITIVE, ToyTaskConfig, make_toy_task

from conftest import read_metrics, run_cli

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)

QUICK = ["eval.samples_per_prompt=1", "trainer.progress_bar=none", "trainer.checkpoint_every_n_steps=2", "logger=csv"]
PPO = ["algo.total_episodes=32", "algo.rollout_batch_size=16", "algo.minibatch_size=16", "algo.ppo_epochs=1"]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A user's small GPT-2 (built locally, loaded by path), a chat file of prompts with demonstrations,
    and a preference file of multi-turn HH-RLHF transcripts."""
    root = tmp_path_factory.mktemp("user")
    make_toy_task(ToyTaskConfig(num_sft_examples=200, n_positions=128), seed=0).build_base_model(root / "model")
    rng = random.Random(0)
    chats, hh = [], []
    for i in range(60):
        noun = NOUNS[i % len(NOUNS)]
        question = f"tell me about the {noun} ."
        good, bad = rng.choice(POSITIVE), rng.choice(NEGATIVE)
        chats.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": f"the {noun} is {good} ."}],
                      "reference": f"the {noun} is {good} ."})
        opening = f"\n\nHuman: hi\n\nAssistant: hello\n\nHuman: {question}\n\nAssistant:"
        hh.append({"chosen": f"{opening} the {noun} is {good} and {rng.choice(POSITIVE)} .", "rejected": f"{opening} the {noun} is {bad} ."})
    (root / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    (root / "hh.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hh))
    return root


def _args(files, tmp_path, *extra):
    return [
        "task=dataset", f"task.path={files / 'chat.jsonl'}", "task.heldout_fraction=0.2",
        "feedback=dataset", f"feedback.path={files / 'hh.jsonl'}", f"model.name_or_path={files / 'model'}",
        "sft.epochs=1", *QUICK, f"cache_dir={tmp_path / 'cache'}", *extra,
    ]


def _paths(run_dir) -> dict:
    return json.loads((run_dir / "paths.json").read_text())


JUDGE_CLIENT = """
class WordCountJudge:
    # Prefers the response with more words: P(A) = 0.9 when A is longer, 0.1 when shorter.
    def label_probabilities(self, texts, labels):
        out = []
        for text in texts:
            a = text.split("Response A: ")[1].split("Response B: ")[0]
            b = text.split("Response B: ")[1].split("Following the principles")[0]
            p = 0.9 if len(a.split()) > len(b.split()) else 0.1 if len(a.split()) < len(b.split()) else 0.5
            out.append([p, 1 - p])
        return out

    def generate(self, texts, max_new_tokens):
        return ["" for _ in texts]


def make(cfg):
    return WordCountJudge()
"""


def test_sft_reward_model_ppo_on_the_users_files(user_files, tmp_path):
    # The evaluation's AI judge is a plugin's client, found on PYTHONPATH as a user's package would be.
    (tmp_path / "word_count_judge.py").write_text(JUDGE_CLIENT)
    args = _args(user_files, tmp_path, "reward.epochs=1", *PPO, "eval.judge=word_count_judge:make", f"hydra.run.dir={tmp_path / 'run'}")
    result = run_cli(args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    # Held-out preferences: the 6 held-out transcripts score the reward model, SFT (against the starting
    # model) and PPO (against SFT); the judge and the reward model each give a win rate with its interval.
    assert metrics["eval/heldout_preference_records"] == metrics["feedback/heldout_records"] == 6
    for name in ("reward_model", "sft", "ppo"):
        assert 0.0 <= metrics[f"eval/{name}/pref_accuracy"] <= 1.0 and metrics[f"eval/{name}/pref_accuracy_se"] >= 0.0
    # The reward stage measured its own held-out accuracy on the same pairs, by its own code.
    assert metrics["eval/reward_model/pref_accuracy"] == pytest.approx(metrics["reward/accuracy"], abs=1e-6)
    for prefix in ("proxy_", "judge_", "proxy_lc_", "judge_lc_"):
        low, rate, high = (metrics[f"eval/ppo/{prefix}win_rate{end}"] for end in ("_low", "", "_high"))
        assert 0.0 <= low <= rate <= high <= 1.0
    assert abs(metrics["eval/ppo/judge_position_bias"]) < 1e-9  # the word counter has no position bias
    said = " ".join(result.stdout.split())  # the verdict lines wrap at the console's width
    assert "held-out preference pairs" in said and "By the AI judge (both orders), ppo's responses beat sft's in" in said
    assert metrics["feedback/train_records"] + metrics["feedback/heldout_records"] == 60
    assert 0.0 <= metrics["reward/accuracy"] <= 1.0
    assert "eval/ppo/proxy_reward" in metrics and "eval/ppo/perplexity" in metrics
    assert not any("gold" in key for key in metrics)  # the user's task has no hidden utility
    assert metrics["eval/ppo/rouge_l"] >= 0.0 and "eval/ppo/bleu" in metrics and 0.0 < metrics["eval/ppo/distinct_1"] <= 1.0
    # The chat file's prompts are not the transcripts' prompts: the run says the policy never sees the latter.
    assert "none of the 60 preference records' prompts is a prompt of task 'dataset'" in (tmp_path / "run" / "rlhf_lab.log").read_text()
    paths = _paths(tmp_path / "run")
    assert paths["policy"] == str((tmp_path / "run" / "policy").resolve())
    assert f"policy: {paths['policy']}" in result.stdout


def test_sft_then_dpo_on_the_users_files(user_files, tmp_path):
    result = run_cli(_args(user_files, tmp_path, "algo=dpo", "algo.epochs=1", f"hydra.run.dir={tmp_path / 'run'}"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert metrics["feedback/train_pairs"] == metrics["feedback/train_records"]
    assert "reward/accuracy" not in metrics and "eval/dpo/kl" in metrics
    # No gold utility and no reward model: the held-out transcripts are what the run is judged by.
    assert metrics["eval/heldout_preference_pairs"] == metrics["feedback/heldout_records"] == 6
    assert "eval/dpo/pref_accuracy_diff" in metrics and "eval/reward_model/pref_accuracy" not in metrics
    assert "dpo's implicit reward (log-ratio to sft) ranks the preferred response first" in " ".join(result.stdout.split())


def test_stages_one_command_at_a_time(user_files, tmp_path, refused):
    """Reward model alone, then PPO from the printed SFT policy and reward model, with no SFT and no feedback."""
    args = [a for a in _args(user_files, tmp_path, "reward.epochs=1", "stop_after=reward_model") if not a.startswith("eval.")]
    first = run_cli([*args, f"hydra.run.dir={tmp_path / 'rm'}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    paths = _paths(tmp_path / "rm")
    assert set(paths) == {"run_dir", "sft", "preferences", "reward_model"}
    assert f"reward_model: {paths['reward_model']}" in first.stdout
    assert not (tmp_path / "rm" / "policy").exists() and "reward/accuracy" in read_metrics(tmp_path / "rm")
    code, err = refused([*args, "eval.samples_per_prompt=2", f"hydra.run.dir={tmp_path / 'x'}"])
    assert code == 2 and "with stop_after=reward_model this run builds only" in err

    second = run_cli([
        "task=dataset", f"task.path={user_files / 'chat.jsonl'}", "task.heldout_fraction=0.2", f"model.name_or_path={paths['sft']}",
        "sft.enabled=false", f"reward.path={paths['reward_model']}", *QUICK, *PPO,
        f"cache_dir={tmp_path / 'cache2'}", f"hydra.run.dir={tmp_path / 'ppo'}",
    ], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    metrics = read_metrics(tmp_path / "ppo")
    assert "time/sft_seconds" in metrics and "feedback/train_records" not in metrics and "reward/accuracy" not in metrics
    # Nothing was trained or collected before the policy: the cache holds the policy alone, no SFT, feedback or reward model.
    assert [p.name for p in (tmp_path / "cache2").iterdir() if not p.name.startswith(".")] == ["policy"]  # (.inprogress, .locks: bookkeeping)
    assert _paths(tmp_path / "ppo")["policy"].endswith("ppo/policy")


def test_a_prompt_file_without_demonstrations_asks_for_them_or_sft_disabled(user_files, tmp_path, refused):
    (tmp_path / "prompts.csv").write_text("question\n" + "".join(f"tell me about the {n} .\n" for n in NOUNS))
    args = ["task=dataset", f"task.path={tmp_path / 'prompts.csv'}", "task.columns.prompt=question",
            f"model.name_or_path={user_files / 'model'}", "reward=rule", "reward.function=rlhf_lab.rewards.rules:word_count",
            "algo=rloo", "algo.total_episodes=16", "algo.rollout_batch_size=16", *QUICK, f"cache_dir={tmp_path / 'cache'}"]
    code, err = refused([*args, f"hydra.run.dir={tmp_path / 'a'}"])
    assert code == 2
    assert "has no demonstrations to fine-tune on" in err and "sft.enabled=false" in err
    result = run_cli([*args, "sft.enabled=false", f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval/rloo/proxy_reward" in read_metrics(tmp_path / "b")


def _generates_from_another_directory(run_dir: Path, monkeypatch) -> None:
    """The README's promise: the adapters load with plain transformers + peft, and the merged policy with
    plain transformers, from any working directory."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    elsewhere = run_dir.parent / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "policy")
    inputs = tokenizer("tell me about the cat .", return_tensors="pt")
    adapted = AutoPeftModelForCausalLM.from_pretrained(run_dir / "policy")
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "policy_merged")
    with torch.no_grad():
        for model in (adapted, merged):
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            assert out.shape[1] > inputs["input_ids"].shape[1]
        # the merged weights are the adapters' effect folded in: the same next-token distribution
        torch.testing.assert_close(adapted(**inputs).logits, merged(**inputs).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("algo", ["ppo", "dpo"])
def test_lora_runs_save_adapters_and_merged_weights(user_files, tmp_path, algo, monkeypatch):
    """LoRA on: SFT, the reward model, the critic and the policy train adapters; the policy is saved as
    an adapter directory and, asked for, as merged weights that plain transformers loads."""
    extra = ["reward.epochs=1", *PPO, "model.gradient_checkpointing=true"] if algo == "ppo" else ["algo=dpo", "algo.epochs=1"]
    args = _args(user_files, tmp_path, *extra, "model.lora.r=4", "model.lora.merge=true", f"hydra.run.dir={tmp_path / 'run'}")
    # a relative cache, as the default is: the adapter must still name a base that loads from elsewhere
    args = [a for a in args if not a.startswith("cache_dir=")] + ["cache_dir=cache"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = _paths(tmp_path / "run")
    adapter = json.loads((tmp_path / "run" / "policy" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["base_model_name_or_path"] == paths["sft"] == str(tmp_path / "cache" / "sft" / Path(paths["sft"]).name)
    _generates_from_another_directory(tmp_path / "run", monkeypatch)
    from rlhf_lab.models.loading import load_policy

    merged = load_policy(paths["policy_merged"])
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    from safetensors.torch import load_file

    # LoRA's B matrices start at zero: non-zero ones were trained.
    weights = load_file(str(tmp_path / "run" / "policy" / "adapter_model.safetensors"))
    assert any("lora_B" in name for name in weights) and all(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)
    assert f"eval/{algo}/kl" in read_metrics(tmp_path / "run")
