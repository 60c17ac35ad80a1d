"""Tests of the keyword_judge plugin: the judge itself (fast, in-process) and its discovery by rlhf_lab
through the ``rlhf_lab`` entry point (subprocesses of ``python -m rlhf_lab``, a few seconds each).

Run from the rlhf_lab checkout: ``python -m pytest plugins/rlhf_lab_keyword_judge/tests -q``.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("rlhf_lab")
plugin = pytest.importorskip("rlhf_lab_keyword_judge.plugin")

from rlhf_lab.api import RlhfLabError  # noqa: E402

KeywordJudge, KeywordJudgeConfig = plugin.KeywordJudge, plugin.KeywordJudgeConfig
DIST = "rlhf-lab-keyword-judge"
AUTOLOAD_ENV = "RLHF_LAB_DISABLE_PLUGIN_AUTOLOAD"


def _dist_version() -> str | None:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None


requires_install = pytest.mark.skipif(
    _dist_version() is None, reason=f"distribution {DIST} is not installed (pip install -e plugins/rlhf_lab_keyword_judge)"
)


def judge(**overrides) -> KeywordJudge:
    return KeywordJudge(KeywordJudgeConfig(**overrides), task=None)


# Scores under the default keywords (great, lovely, wonderful): 0, 3, 1, 2.
RESPONSES = [
    "the cat is dull .",
    "Great, GREAT and lovely!",
    "the river is wonderful .",
    "the song is lovely and great .",
]
BY_SCORE = [1, 3, 2, 0]


# --- scoring --------------------------------------------------------------------------------------


def test_words_are_whole_and_lowercased():
    assert plugin.words("Great! The GREAT, great-ish day; don't.") == ["great", "the", "great", "great-ish", "day", "don't"]
    assert plugin.keyword_score("Great! The GREAT, great-ish day; greatest.", ["great"]) == 2


def test_score_is_keywords_minus_penalty_words():
    assert [judge().score(r) for r in RESPONSES] == [0, 3, 1, 2]
    j = judge(keywords=["Lovely"], penalty_words=["dull", "great"])
    assert [j.score(r) for r in RESPONSES] == [-1, -1, 0, 0]


# --- ranking and rating ---------------------------------------------------------------------------


def test_tiny_noise_ranking_follows_keyword_counts():
    records = judge(noise=1e-9).collect(["p0", "p1"], [RESPONSES, RESPONSES[::-1]], kind="ranking", seed=0)
    assert [r.ranking for r in records] == [BY_SCORE, [2, 0, 1, 3]]  # reversed scores: 2, 1, 3, 0
    for record in records:
        record.validate()
        assert record.scores is None
        assert record.annotator == "keyword_judge"
        assert record.meta["keyword_scores"] in ([0, 3, 1, 2], [2, 1, 3, 0])
    assert records[0].preference_pairs()[:3] == [(1, 3), (1, 2), (1, 0)]


def test_tiny_noise_ratings_are_the_keyword_counts():
    (record,) = judge(noise=1e-9).collect(["p"], [RESPONSES], kind="rating", seed=3)
    record.validate()
    assert record.ranking is None
    assert record.scores == pytest.approx([0, 3, 1, 2], abs=1e-6)


def test_ranking_is_bradley_terry_in_the_score_difference():
    # P(score-1 response ranked above score-0 response) = sigmoid(1 / noise).
    n, noise = 4000, 1.0
    records = judge(noise=noise).collect(["p"] * n, [["meh", "great"]] * n, kind="ranking", seed=0)
    wins = sum(r.ranking[0] == 1 for r in records) / n
    assert wins == pytest.approx(1 / (1 + math.exp(-1 / noise)), abs=0.03)


def test_rating_noise_has_std_noise():
    n, noise = 4000, 0.5
    records = judge(noise=noise).collect(["p"] * n, [["great great"]] * n, kind="rating", seed=0)
    values = [r.scores[0] for r in records]
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    assert mean == pytest.approx(2.0, abs=0.05)
    assert std == pytest.approx(noise, rel=0.05)


@pytest.mark.parametrize("kind", ["ranking", "rating"])
def test_same_seed_same_records(kind):
    prompts, candidates = ["a", "b", "c"], [RESPONSES] * 3
    first = judge(noise=2.0).collect(prompts, candidates, kind=kind, seed=7)
    again = judge(noise=2.0).collect(prompts, candidates, kind=kind, seed=7)
    other = judge(noise=2.0).collect(prompts, candidates, kind=kind, seed=8)
    assert first == again
    assert first != other


def test_ties_are_broken_at_random():
    ties = ["a b", "c d", "e f", "g h"]  # all score 0
    records = judge(noise=1.0).collect(["p"] * 200, [ties] * 200, kind="ranking", seed=0)
    assert len({tuple(r.ranking) for r in records}) > 12  # of the 24 orders


def test_works_with_a_task_without_gold_utility():
    from rlhf_lab.api import Task

    task = Task(train_prompts=["p"], eval_prompts=["q"], sft_train=[], sft_eval=[], utility=None)
    source = KeywordJudge(KeywordJudgeConfig(), task)
    assert source.needs_candidates is True
    assert (source.responses_per_prompt, source.rounds) == (4, 2)
    (record,) = source.collect(["p"], [RESPONSES], kind="ranking", seed=0, split="heldout")
    record.validate()


def test_unknown_kind_and_mismatched_lists_are_errors():
    with pytest.raises(RlhfLabError, match="cannot produce 'pairwise'"):
        judge().collect(["p"], [RESPONSES], kind="pairwise", seed=0)
    with pytest.raises(RlhfLabError, match="2 prompts but 1 candidate lists"):
        judge().collect(["p", "q"], [RESPONSES], kind="ranking", seed=0)


# --- config ---------------------------------------------------------------------------------------


def test_defaults():
    cfg = KeywordJudgeConfig()
    assert (cfg.name, cfg.keywords, cfg.penalty_words, cfg.responses_per_prompt, cfg.rounds) == (
        "keyword_judge", ["great", "lovely", "wonderful"], [], 4, 2)
    assert cfg.noise > 0


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"noise": 0.0}, "feedback.noise"),
        ({"noise": -1.0}, "feedback.noise"),
        ({"noise": float("nan")}, "feedback.noise"),
        ({"noise": float("inf")}, "feedback.noise"),
        ({"responses_per_prompt": 1}, "feedback.responses_per_prompt"),
        ({"rounds": 0}, "feedback.rounds"),
        ({"keywords": ["very good"]}, "feedback.keywords"),
        ({"keywords": [""]}, "feedback.keywords"),
        ({"penalty_words": ["bad!"]}, "feedback.penalty_words"),
        ({"keywords": [], "penalty_words": []}, "feedback.keywords"),
        ({"keywords": ["Great"], "penalty_words": ["great"]}, "feedback.penalty_words"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        KeywordJudgeConfig(**overrides)


def test_schema_works_with_omegaconf_and_validates_on_to_object():
    from omegaconf import OmegaConf

    node = OmegaConf.structured(KeywordJudgeConfig)
    merged = OmegaConf.merge(node, OmegaConf.from_dotlist(["keywords=[good]", "noise=0.25"]))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, KeywordJudgeConfig) and cfg.keywords == ["good"] and cfg.noise == 0.25
    with pytest.raises(ValueError, match=r"feedback\.noise"):
        OmegaConf.to_object(OmegaConf.merge(node, {"noise": 0}))


def test_hook_registers_the_source():
    calls = []
    plugin.rlhf_lab_register_feedback_sources(register=lambda *args: calls.append(args))
    assert calls == [("keyword_judge", KeywordJudge, KeywordJudgeConfig)]


def test_import_does_not_pull_in_torch():
    code = "import sys, rlhf_lab_keyword_judge.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


# --- discovery by rlhf_lab through the entry point ------------------------------------------------


def _rlhf_lab(*args: str, cwd, autoload: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(AUTOLOAD_ENV, None)
    env.pop("HYDRA_FULL_ERROR", None)
    if not autoload:
        env[AUTOLOAD_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "rlhf_lab", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@requires_install
def test_plugin_is_listed_through_its_entry_point(tmp_path):
    out = _rlhf_lab("plugins", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if "keyword_judge" in line]
    assert rows, out.stdout
    assert any(f"{DIST} {_dist_version()}" in row and "feedback" in row and "KeywordJudgeConfig" in row for row in rows), out.stdout


@requires_install
def test_plugin_is_not_listed_with_autoload_disabled(tmp_path):
    out = _rlhf_lab("plugins", cwd=tmp_path, autoload=False)
    assert out.returncode == 0, out.stderr
    assert "simulated" in out.stdout  # the built-ins still load
    assert "keyword_judge" not in out.stdout and DIST not in out.stdout


@requires_install
def test_hydra_composes_feedback_keyword_judge(tmp_path):
    import yaml

    out = _rlhf_lab("feedback=keyword_judge", "feedback.keywords=[good]", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: keyword_judge" in out.stdout
    feedback = yaml.safe_load(out.stdout)["feedback"]
    assert feedback == {
        "name": "keyword_judge", "keywords": ["good"], "penalty_words": [],
        "responses_per_prompt": 4, "rounds": 2, "noise": KeywordJudgeConfig().noise,
    }
    assert not (tmp_path / "outputs").exists()  # --cfg job only prints


@requires_install
def test_hydra_rejects_a_badly_typed_value(tmp_path):
    out = _rlhf_lab("feedback=keyword_judge", "feedback.noise=abc", "--cfg", "job", cwd=tmp_path)
    assert out.returncode != 0
    assert "feedback.noise" in out.stderr + out.stdout


@pytest.mark.slow  # a whole run of rlhf_lab (its fast tier: -m "not slow")
@requires_install
def test_whole_pipeline_trains_a_reward_model_on_the_judges_feedback(tmp_path):
    """A tiny real run: the judge labels SFT candidates, the reward model learns its keyword preference."""
    import json

    tiny = [
        "task.num_sft_examples=400", "sft.epochs=2", "reward.epochs=3", "algo.total_episodes=64",
        "algo.rollout_batch_size=32", "algo.ppo_epochs=1", "eval.samples_per_prompt=1",
        "trainer.progress_bar=none", "logger=csv",
    ]
    out = _rlhf_lab(
        "feedback=keyword_judge", "feedback.keywords=[great,lovely]", "feedback.rounds=1", *tiny,
        f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["feedback/train_records"] > 0
    # One round over the training prompts, K = 4 candidates: a ranking gives 6 pairs per record.
    assert metrics["feedback/train_pairs"] == 6 * metrics["feedback/train_records"]
    feedback_dir = next((tmp_path / "cache" / "preferences").iterdir())
    first = json.loads((feedback_dir / "train.jsonl").read_text().splitlines()[0])
    assert first["annotator"] == "keyword_judge" and len(first["responses"]) == 4
