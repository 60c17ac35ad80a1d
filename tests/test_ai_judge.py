"""``feedback=ai_judge`` (rlhf_lab/feedback/ai_judge.py): the both-orders preference against hand-computed
probabilities, critique-and-revise records, a local judge model's label probabilities against a direct
forward, and a whole run on the toy task through the CLI."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from conftest import TINY_UPSTREAM, read_metrics, run_cli

from rlhf_lab.errors import RlhfLabError
from rlhf_lab.feedback.ai_judge import AIJudgeConfig, AIJudgeFeedback, pair_preferences
from rlhf_lab.feedback.judges import LocalJudge, load_client


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class FakeJudge:
    """P(answer A) = sigmoid(quality(A) - quality(B) + bias): a judge that favours the first position by ``bias``.
    Quality is the number of times 'good' appears. Generation returns scripted text."""

    def __init__(self, bias: float = 1.0, revisions=None) -> None:
        self.bias, self.revisions, self.seen = bias, revisions or {}, []

    @staticmethod
    def _parts(text: str) -> tuple[str, str]:
        a = text.split("Response A: ")[1].split("\n\nResponse B: ")[0]
        b = text.split("Response B: ")[1].split("\n\n")[0]
        return a, b

    def label_probabilities(self, texts, labels):
        assert labels == [" A", " B"]
        out = []
        for text in texts:
            a, b = self._parts(text)
            p = sigmoid(a.count("good") - b.count("good") + self.bias)
            out.append([p, 1 - p])
        return out

    def generate(self, texts, max_new_tokens):
        self.seen.extend(texts)
        out = []
        for text in texts:
            if text.endswith("Critique:"):
                out.append("too short")
            else:
                response = text.split("Response: ")[1].split("\n")[0]
                out.append(self.revisions.get(response, response + " good"))
        return out


def judge_source(judge, **cfg) -> AIJudgeFeedback:
    module = types.ModuleType("fake_judge_for_tests")
    module.make = lambda cfg: judge
    sys.modules["fake_judge_for_tests"] = module
    return AIJudgeFeedback(AIJudgeConfig(client="fake_judge_for_tests:make", **cfg), task=None)


def test_asking_both_orders_cancels_position_bias():
    cfg = AIJudgeConfig(client="x:y")
    # d = quality(first) - quality(second); bias b = 1. Forward P(A) = s(d + b); swapped P(B) = 1 - s(-d + b) = s(d - b).
    better, label_a = pair_preferences(FakeJudge(bias=1.0), cfg, "- be good", [("p", "good good", "bad"), ("p", "same", "same")])
    assert better[0] == pytest.approx((sigmoid(3) + sigmoid(1)) / 2)
    assert better[1] == pytest.approx(0.5)  # equal responses: exactly a tie, however biased the judge is
    # The judge's mean P(A) over both orders, less 1/2, is its position bias: s(b) - 1/2 for equal responses.
    assert label_a[1] - 0.5 == pytest.approx(sigmoid(1) - 0.5)
    assert label_a[0] == pytest.approx((sigmoid(3) + sigmoid(-1)) / 2)


def test_compare_ranks_by_pairwise_probabilities_and_reports_ties_and_bias():
    source = judge_source(FakeJudge(bias=0.5), responses_per_prompt=3, tie_margin=0.01)
    records = source.collect(["p1", "p2"], [["bad", "good", "good good"], ["same", "same"]], kind="ranking", seed=0)
    assert len(records) == 1 and records[0].prompt == "p1"
    assert records[0].ranking == [2, 1, 0]
    assert records[0].meta["p_better"]["1>2"] == pytest.approx((sigmoid(-0.5) + sigmoid(-1.5)) / 2, abs=1e-6)
    assert source.stats["feedback/train_judge_ties"] == 1
    assert source.stats["feedback/train_judge_position_bias"] > 0  # this judge favours position A
    with pytest.raises(RlhfLabError, match="rankings"):
        source.collect(["p"], [["a", "b"]], kind="rating", seed=0)


def test_critique_and_revise_prefers_the_revision_and_skips_unchanged_ones():
    judge = FakeJudge(revisions={"keep me": "keep me"})
    source = judge_source(judge, mode="critique_revise", principles=["Be kind.", "Be brief."])
    assert source.responses_per_prompt == 1
    records = source.collect(["p1", "p2"], [["hello"], ["keep me"]], kind="ranking", seed=3, split="heldout")
    assert len(records) == 1
    record = records[0]
    assert (record.responses, record.ranking, record.annotator) == (["hello good", "hello"], [0, 1], "ai_judge:revision")
    assert record.meta["critique"] == "too short" and record.meta["principle"] in ("Be kind.", "Be brief.")
    critique_prompt = next(t for t in judge.seen if t.startswith("Request: p1") and t.endswith("Critique:"))
    assert record.meta["principle"] in critique_prompt
    revision_prompt = next(t for t in judge.seen if t.startswith("Request: p1") and t.endswith("Revision:"))
    assert "Critique: too short" in revision_prompt
    assert source.stats["feedback/heldout_unrevised"] == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(), "exactly one of model"),
        (dict(model="m", client="a:b"), "exactly one of model"),
        (dict(model="m", template="{prompt} {response_a}"), "template must use"),
        (dict(model="m", template="{prompt} {response_a} {response_b} {extra}"), "template must use"),
        (dict(model="m", revision_template="{prompt}"), "revision_template must use"),
        (dict(model="m", labels=[" A", " A"]), "two different"),
        (dict(model="m", mode="vote"), "mode must be"),
        (dict(model="m", tie_margin=0.5), "tie_margin"),
        (dict(model="m", principles=[]), "constitution is empty"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        AIJudgeConfig(**overrides)


def test_principles_file_and_plugin_client(tmp_path, monkeypatch):
    path = tmp_path / "constitution.txt"
    path.write_text("# ours\nBe accurate.\n\nBe brief.\n")
    module = types.ModuleType("judge_plugin_for_tests")
    module.make = lambda cfg: FakeJudge(bias=0.0)
    monkeypatch.setitem(sys.modules, "judge_plugin_for_tests", module)
    source = AIJudgeFeedback(AIJudgeConfig(client="judge_plugin_for_tests:make", principles_file=str(path)), task=None)
    assert source.principles == ["Be accurate.", "Be brief."]
    records = source.collect(["p"], [["bad", "good"]], kind="ranking", seed=0)
    assert records[0].ranking == [1, 0]
    with pytest.raises(RlhfLabError, match="cannot import"):
        load_client("no_such_module_anywhere:make", None)
    module.broken = lambda cfg: object()
    with pytest.raises(RlhfLabError, match="no label_probabilities"):
        load_client("judge_plugin_for_tests:broken", None)
    with pytest.raises(RlhfLabError, match="not found"):
        AIJudgeFeedback(AIJudgeConfig(client="judge_plugin_for_tests:make", principles_file=str(tmp_path / "missing.txt")), task=None)
    # Checked when the run is set up, not when the judge is first asked.
    with pytest.raises(RlhfLabError, match="cannot import"):
        AIJudgeFeedback(AIJudgeConfig(client="no_such_module_anywhere:make"), task=None)
    with pytest.raises(RlhfLabError, match="does not exist"):
        AIJudgeFeedback(AIJudgeConfig(model=str(tmp_path / "no_judge_here")), task=None)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny GPT-2 with the toy tokenizer and 512 positions (judge prompts are longer than the toy's 64)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf_lab.models.loading import load_tokenizer
    from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

    base = tmp_path_factory.mktemp("toy_base")
    make_toy_task(ToyTaskConfig(num_sft_examples=100), seed=0).build_base_model(base)
    tokenizer = load_tokenizer(str(base))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_layer=1, n_head=2, n_embd=32,
                                       bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    out = tmp_path_factory.mktemp("judge")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def direct_label_probabilities(judge, text, labels):
    """Each label's summed log-probability after ``text``, one unpadded sequence at a time, softmaxed."""
    from rlhf_lab.data import encode_prompt

    scores = []
    for label in labels:
        prompt = encode_prompt(judge.tokenizer, text)
        ids = torch.tensor([prompt + judge.tokenizer(label, add_special_tokens=False)["input_ids"]])
        logprobs = torch.log_softmax(judge.model(input_ids=ids).logits[0, :-1], -1)
        scores.append(sum(float(logprobs[t - 1, ids[0, t]]) for t in range(len(prompt), ids.shape[1])))
    return torch.softmax(torch.tensor(scores), -1).tolist()


@pytest.mark.parametrize("labels", [[" A", " B"], ["yes", "no"], [" the", " of"]])
def test_local_judge_label_probabilities_match_a_direct_forward(judge_dir, labels):
    """Batched and left-padded, whether the labels are one token (" the", " of") or several (" A" is
    a space and a letter for this tokenizer)."""
    judge = LocalJudge(str(judge_dir), batch_size=2)
    texts = ["Which is better? Answer:", "A much longer question about the red river and the old cat. Answer:", "Short. Answer:"]
    got = judge.label_probabilities(texts, labels)
    for text, probabilities in zip(texts, got):
        assert probabilities == pytest.approx(direct_label_probabilities(judge, text, labels), abs=1e-5)
        assert sum(probabilities) == pytest.approx(1.0)
    if labels != ["yes", "no"]:
        assert {len(s) for s in judge.label_sequences(labels)} == ({1} if labels == [" the", " of"] else {2})


def test_local_judge_errors_and_generation(judge_dir):
    judge = LocalJudge(str(judge_dir), batch_size=2)
    with pytest.raises(RlhfLabError, match="must exist and differ"):
        judge.label_sequences([" A", " A"])
    with pytest.raises(RlhfLabError, match="over the judge model's 512 positions"):
        judge.label_probabilities(["word " * 600], [" A", " B"])
    revised = judge.generate(["Rewrite: hello. Revision:", "Rewrite: the old cat. Revision:"], max_new_tokens=5)
    assert len(revised) == 2 and all(isinstance(r, str) for r in revised)


@pytest.mark.slow
def test_ai_judge_run_on_the_toy_task_reports_its_agreement_with_the_gold_annotator(tmp_path, judge_dir, refused):
    result = run_cli(
        [*(o for o in TINY_UPSTREAM if not o.startswith("eval.")), "stop_after=preferences", "feedback=ai_judge", f"feedback.model={judge_dir}", "logger=csv",
         f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert metrics["feedback/train_records"] + metrics["feedback/train_judge_ties"] == 231
    assert 0.0 <= metrics["feedback/train_gold_agreement"] <= 1.0
    assert abs(metrics["feedback/train_judge_position_bias"]) < 0.5
    code, err = refused(["feedback=ai_judge", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'bad'}"])
    assert code == 2 and "exactly one of model" in err and "Traceback" not in err


@pytest.mark.parametrize("answer, message", [
    (lambda texts, labels: "A", "label_probabilities() returned A for 1 text(s)"),
    (lambda texts, labels: [[0.5, float("nan")] for _ in texts], "label_probabilities() returned [[0.5, nan]]"),
    (lambda texts, labels: [[0.5, 0.5]], None),
    (lambda texts, labels: 1 / 0, "label_probabilities() raised ZeroDivisionError: division by zero (first input 'Principles:"),
])
def test_a_plugin_client_is_tried_before_any_work_and_named_when_it_answers_wrong(answer, message, monkeypatch):
    module = types.ModuleType("judge_client_for_tests")

    class Client:
        def label_probabilities(self, texts, labels):
            return answer(texts, labels)

        def generate(self, prompts, max_new_tokens):
            return ["fine"] * len(prompts)

    module.make = lambda cfg: Client()
    monkeypatch.setitem(sys.modules, "judge_client_for_tests", module)
    if message is None:
        source = AIJudgeFeedback(AIJudgeConfig(client="judge_client_for_tests:make"), task=None)
        with pytest.raises(RlhfLabError, match=r"returned \[\[0.5, 0.5\]\] for 2 text\(s\)"):  # right for one text, not for two
            source.collect(["p"], [["a", "b"]], kind="ranking", seed=0)
        return
    with pytest.raises(RlhfLabError) as refused:
        AIJudgeFeedback(AIJudgeConfig(client="judge_client_for_tests:make"), task=None)
    assert "feedback.client 'judge_client_for_tests:make': " + message in str(refused.value)
