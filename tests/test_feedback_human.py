"""``feedback=human`` end to end through the real CLI, with simulated annotators labelling through the
app's HTTP API as bot labellers: the records match ``feedback=simulated``'s, a restart loses and
repeats no label, and the reward model trained on them is as accurate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SUBPROCESS_TIMEOUT, read_metrics, run_cli

from rlhf_lab.feedback.human import HumanFeedbackConfig
from rlhf_lab.records import read_jsonl
from rlhf_lab.labelling.store import Label, LabelStore
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)

COMMON = [
    "stop_after=reward_model", "feedback.responses_per_prompt=4", "feedback.rounds=2", "task.num_sft_examples=1000",
    "sft.epochs=2", "reward.epochs=4", "trainer.progress_bar=none", "logger=csv",
]
HUMAN = ["feedback=human", "feedback.labellers=[]", "feedback.port=0", "feedback.poll_seconds=0.2"]


def gold_pair_accuracy(reward_model: Path, records, utility) -> float:
    """Share of response pairs (utility ties left out) the reward model orders like the hidden utility."""
    from rlhf_lab.models.loading import load_tokenizer, load_value_model
    from rlhf_lab.stages.reward import score_records

    scores = score_records(load_value_model(str(reward_model)), load_tokenizer(str(reward_model)), records).tolist()
    agree = total = start = 0
    for record in records:
        s, u = scores[start : start + len(record.responses)], [utility(record.prompt, r) for r in record.responses]
        start += len(record.responses)
        for a in range(len(u)):
            for b in range(a + 1, len(u)):
                if u[a] != u[b]:
                    total += 1
                    agree += (s[a] - s[b]) * (u[a] - u[b]) > 0
    return agree / total


def test_bot_labellers_through_the_app_match_simulated_feedback_and_survive_a_restart(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    db = tmp_path / "labels.db"

    simulated = run_cli([*COMMON, "feedback=simulated", cache, f"hydra.run.dir={tmp_path / 'sim'}"], cwd=tmp_path)
    assert simulated.returncode == 0, simulated.stderr[-3000:]

    # Nobody labels: the run gives up after its timeout, saying where the labels are kept.
    waiting = run_cli([*COMMON, *HUMAN, f"feedback.db={db}", "feedback.labellers=[ann]", "feedback.timeout_minutes=0.02", cache, f"hydra.run.dir={tmp_path / 'wait'}"], cwd=tmp_path)
    assert waiting.returncode == 2
    assert "feedback.timeout_minutes" in waiting.stderr and str(db) in waiting.stderr and "Traceback" not in waiting.stderr
    # ... meanwhile a careful person labelled a few items; the restarted run must keep them and not ask again.
    utility = make_toy_task(ToyTaskConfig(num_sft_examples=1000), seed=0).utility
    store = LabelStore(db)
    person = store.labeller("default", "ann")
    items = store.items("default", source="campaign")
    assert len(items) == 231 * 2  # training prompts x rounds, for the training split
    early = {item.id: sorted(range(4), key=lambda i: -utility(item.prompt, item.responses[i])) for item in items[:25]}
    for item_id, ranking in early.items():
        store.submit(person, Label(item_id, person.id, ranking=ranking))
    store.close()

    human = run_cli([*COMMON, *HUMAN, f"feedback.db={db}", "feedback.bot_labellers=3", cache, f"hydra.run.dir={tmp_path / 'human'}"], cwd=tmp_path)
    assert human.returncode == 0, human.stderr[-3000:]
    assert "sft: reusing cached artifact" in human.stdout + human.stderr

    store = LabelStore(db)
    labels = store.labels("default")
    per_item = {}
    for label in labels:
        per_item[label.item_id] = per_item.get(label.item_id, 0) + 1
    campaign_items = store.items("default", source="campaign")
    assert len(campaign_items) == 231 * 2 + 57  # train and held-out batches
    assert set(per_item.values()) == {1} and len(per_item) == len(campaign_items)  # redundancy 1: once each
    kept = {l.item_id: l.ranking for l in labels if l.item_id in early}
    assert kept == early

    sim, hum = read_metrics(tmp_path / "sim"), read_metrics(tmp_path / "human")
    print({k: (sim.get(k), hum.get(k)) for k in ("feedback/train_gold_agreement", "feedback/heldout_gold_agreement", "reward/accuracy")})
    assert hum["feedback/train_records"] == sim["feedback/train_records"] == 462
    assert hum["feedback/heldout_records"] == sim["feedback/heldout_records"] == 57
    # Same annotator model (Plackett-Luce, the same spread of temperatures): the same agreement with the
    # hidden utility, within noise (2772 pairs: SE about 0.01), apart from the 25 hand labels above.
    assert abs(hum["feedback/train_gold_agreement"] - sim["feedback/train_gold_agreement"]) < 0.05
    assert sim["feedback/train_gold_agreement"] > 0.7
    # ... and so a reward model of the same accuracy. Each run's reward/accuracy is measured on its own
    # independently labelled held-out records (SE about 0.025 each); compared on the same pairs against
    # the hidden utility, the two models differ only by what they were trained on.
    # Which held-out pairs the bots label, and in which order, depends on thread timing, so this figure moves
    # by more than its SE (0.56 and 0.62 seen in one CI run): above chance is all it shows; the comparison is the next one.
    assert sim["reward/accuracy"] > 0.5 and hum["reward/accuracy"] > 0.5
    heldout = [r for run in ("sim", "human") for r in read_jsonl(Path(json.loads((tmp_path / run / "paths.json").read_text())["preferences"]) / "heldout.jsonl")]
    accuracy = {run: gold_pair_accuracy(Path(json.loads((tmp_path / run / "paths.json").read_text())["reward_model"]), heldout, utility) for run in ("sim", "human")}
    print(accuracy)
    # Well above chance (about 330 held-out pairs: SE 0.027). On these 462 records the gold-pair accuracy
    # moves between 0.60 and 0.68 with the stages' dropout settings alone (seen 2026-12-07), so the bar is
    # set below that spread; what this test is about is the next line.
    assert accuracy["sim"] > 0.58 and accuracy["human"] > 0.58
    assert abs(accuracy["human"] - accuracy["sim"]) < 0.07  # seen: 0.003 to 0.03 apart
    assert "feedback/krippendorff_alpha" not in hum  # redundancy 1: no item has two labels to compare

    paths = json.loads((tmp_path / "human" / "paths.json").read_text())
    records = read_jsonl(Path(paths["preferences"]) / "train.jsonl")
    assert all(r.response_ids is not None and r.meta["labels"] == 1 and r.annotator == "human:majority" for r in records)


def test_human_feedback_config_checks(tmp_path, refused):
    import pytest

    for bad in (dict(responses_per_prompt=1), dict(labellers=["ann:boss"]), dict(labellers=[], bot_labellers=0),
                dict(aggregation="mean"), dict(gold_fraction=1.5), dict(port=70000)):
        with pytest.raises(ValueError):
            HumanFeedbackConfig(**bad)
    from types import SimpleNamespace

    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.feedback.human import HumanFeedback

    with pytest.raises(RlhfLabError, match="is a directory"):
        HumanFeedback(HumanFeedbackConfig(db=str(tmp_path)), SimpleNamespace(utility=None))
    with pytest.raises(RlhfLabError, match="hidden utility"):
        HumanFeedback(HumanFeedbackConfig(db=str(tmp_path / "l.db"), bot_labellers=2), SimpleNamespace(utility=None))
    code, err = refused(["feedback=human", "feedback.labellers=[':expert']", f"hydra.run.dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"])
    assert code == 2 and "feedback" in err and "name:role" in err


def test_collect_goes_on_at_the_quota_and_adds_the_deployments_feedback(tmp_path):
    import threading
    import time
    from types import SimpleNamespace

    from rlhf_lab.feedback.human import HumanFeedback
    from rlhf_lab.labelling.campaign import Campaign

    db = tmp_path / "labels.db"
    store = LabelStore(db)
    Campaign(store, "default")
    app_token = store.add_labeller("default", "shop", "app")
    (logged,) = store.add_items("default", "online", [{"prompt": "from prod", "responses": ["x", "y"]}], source="online")
    store.submit(store.labeller_for_token(app_token), Label(logged, store.labeller("default", "shop").id, ranking=[1, 0]))

    cfg = HumanFeedbackConfig(db=str(db), labellers=["ann"], port=0, poll_seconds=0.05, quota=0.5)
    source = HumanFeedback(cfg, SimpleNamespace(utility=None))
    prompts, candidates = [f"p{i}" for i in range(10)], [[f"a{i}", f"b{i}"] for i in range(10)]
    result = {}
    worker = threading.Thread(target=lambda: result.update(records=source.collect(prompts, candidates, kind="ranking", seed=7)))
    worker.start()
    while not LabelStore(db).items("default", batch="train-seed7"):
        time.sleep(0.05)
    ann = store.labeller("default", "ann")
    for item in store.items("default", batch="train-seed7")[:5]:  # half of the items: the quota
        store.submit(ann, Label(item.id, ann.id, ranking=[1, 0]))
    worker.join(timeout=SUBPROCESS_TIMEOUT)
    records = result["records"]
    assert sorted(r.prompt for r in records if r.annotator == "human:majority") == [f"p{i}" for i in range(5)]
    assert [(r.prompt, r.ranking) for r in records if r.annotator.startswith("online")] == [("from prod", [1, 0])]
    assert source.stats["feedback/train_online_records"] == 1
