"""DPO family (rlhf_lab/algos/dpo.py): pairs from records, the concatenated forward, reference
log-probs computed once, and each loss and implicit reward against a direct computation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf_lab.algos.dpo import DPOModule, preference_pairs
from rlhf_lab.algos.dpo_config import DPOConfig
from rlhf_lab.algos.inputs import AlgoInputs
from rlhf_lab.data import collate_pairs, encode_prompt, encode_response
from rlhf_lab.records import PreferenceRecord
from rlhf_lab.models.loading import load_policy, load_tokenizer
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

RECORDS = [
    {"prompt": "describe the red river .", "responses": ["the river is lovely .", "the river is dull .", "the cat is bad ."], "ranking": [0, 1, 2]},
    {"prompt": "tell me about the old cat .", "responses": ["the cat is great and good .", "the cat is awful ."], "ranking": [1, 0]},
    {"prompt": "describe the quiet garden .", "responses": ["the garden is plain .", "the garden is plain ."], "ranking": [0, 1]},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    task = make_toy_task(ToyTaskConfig(num_sft_examples=200), seed=0)
    model_dir = tmp_path_factory.mktemp("toy_model")
    task.build_base_model(model_dir)
    prefs = tmp_path_factory.mktemp("prefs")
    for split in ("train", "heldout"):
        (prefs / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return model_dir, load_tokenizer(str(model_dir)), prefs


def make(setup, **cfg) -> DPOModule:
    model_dir, tokenizer, prefs = setup
    reference = load_policy(str(model_dir))
    torch.manual_seed(0)
    module = DPOModule(DPOConfig(batch_size=8, **cfg), AlgoInputs(
        sft=model_dir, reference=reference, tokenizer=tokenizer, prompts=[], seed=0, preferences=prefs))
    # Perturb the policy so it differs from the reference: implicit rewards are then non-zero.
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.on_fit_start()
    return module


def test_a_k_wise_ranking_gives_all_its_pairs_and_identical_responses_none(setup):
    _, tokenizer, _ = setup
    pairs = preference_pairs([PreferenceRecord(**r) for r in RECORDS], tokenizer)
    # 3-choose-2 = 3 pairs, then 1 pair, then none (the two responses are the same text)
    assert len(pairs) == 4
    assert pairs[0][1] == encode_response(tokenizer, "the river is lovely .")
    assert pairs[2][2] == encode_response(tokenizer, "the cat is bad .")
    assert pairs[3][1] == encode_response(tokenizer, "the cat is awful .")


def test_records_with_token_ids_are_used_as_they_are(setup):
    _, tokenizer, _ = setup
    record = PreferenceRecord(prompt="x", responses=["a", "b"], ranking=[1, 0], response_ids=[[5, 6, 0], [7, 0]])
    assert preference_pairs([record], tokenizer) == [(encode_prompt(tokenizer, "x"), [7, 0], [5, 6, 0])]


def direct_logp(model, tokenizer, prompt, response) -> tuple[float, int]:
    """Summed log-prob of one response alone (no padding, no concatenation) and its length."""
    batch = collate_pairs([prompt], [response], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[0, len(prompt) - 1 : -1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    return float(logp.sum()), len(response)


def trl_style(loss: str, pc, pr, rc, rr, lc, lr, beta, smoothing=0.0, gamma=0.0) -> float:
    """The losses as TRL's trainers write them (sigmoid with label smoothing; IPO on per-token means;
    SimPO as CPOTrainer's: logits = (c - r) - gamma / beta on per-token means)."""
    ls = torch.nn.functional.logsigmoid
    if loss in ("sigmoid", "cdpo"):
        h = torch.tensor((pc - pr) - (rc - rr))
        return float(-ls(beta * h) * (1 - smoothing) - ls(-beta * h) * smoothing)
    if loss == "ipo":
        h = (pc / lc - pr / lr) - (rc / lc - rr / lr)
        return (h - 1 / (2 * beta)) ** 2
    h = torch.tensor((pc / lc - pr / lr) - gamma / beta)
    return float(-ls(beta * h))


@pytest.mark.parametrize("loss", ["sigmoid", "cdpo", "ipo", "simpo"])
def test_loss_and_implicit_rewards_on_a_fixed_batch_match_a_direct_computation(setup, loss):
    _, tokenizer, _ = setup
    module = make(setup, loss=loss, beta=0.5, label_smoothing=0.2, simpo_gamma=0.3)
    batch = next(iter(module._loader("train", shuffle=False)))
    got, stats = module.pair_loss(batch, "train")
    losses, chosen_rewards, rejected_rewards = [], [], []
    for prompt, chosen, rejected in module.pairs["train"]:
        pc, lc = direct_logp(module.policy, tokenizer, prompt, chosen)
        pr, lr = direct_logp(module.policy, tokenizer, prompt, rejected)
        rc, _ = direct_logp(module.reference[0], tokenizer, prompt, chosen)
        rr, _ = direct_logp(module.reference[0], tokenizer, prompt, rejected)
        losses.append(trl_style(loss, pc, pr, rc, rr, lc, lr, 0.5, smoothing=0.2 if loss == "cdpo" else 0.0, gamma=0.3))
        if loss == "simpo":
            chosen_rewards.append(0.5 * pc / lc), rejected_rewards.append(0.5 * pr / lr)
        else:
            chosen_rewards.append(0.5 * (pc - rc)), rejected_rewards.append(0.5 * (pr - rr))
    assert float(got.detach()) == pytest.approx(sum(losses) / len(losses), rel=1e-4, abs=1e-6)
    assert float(stats["rewards/chosen"]) == pytest.approx(sum(chosen_rewards) / 4, rel=1e-4, abs=1e-6)
    assert float(stats["rewards/rejected"]) == pytest.approx(sum(rejected_rewards) / 4, rel=1e-4, abs=1e-6)
    margins = [c - r for c, r in zip(chosen_rewards, rejected_rewards)]
    assert float(stats["rewards/margins"]) == pytest.approx(sum(margins) / 4, rel=1e-4, abs=1e-6)
    assert float(stats["rewards/accuracies"]) == pytest.approx(sum(m > 0 for m in margins) / 4)
    assert not all(abs(m) < 1e-6 for m in margins)  # the check above can tell right from wrong


def test_reference_log_probs_are_computed_once_before_training(setup, tmp_path):
    import lightning.pytorch as pl

    module = make(setup, epochs=2)
    calls = []
    module.reference[0].register_forward_hook(lambda *_: calls.append(1))
    before = {k: v.clone() for k, v in module.reference[0].state_dict().items()}
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module)
    # one batch per split in on_fit_start (4 pairs < batch size 8), none during the 2 epochs
    assert len(calls) == 2
    assert all(torch.equal(before[k], v) for k, v in module.reference[0].state_dict().items())
    assert math.isfinite(float(trainer.callback_metrics["val/rewards/accuracies"]))


@pytest.mark.parametrize("grouped", [True, False])
def test_training_batches_hold_pairs_of_similar_length_unless_told_not_to(setup, grouped):
    from rlhf_lab.resume import length_grouped_order, shuffled_order

    module = make(setup, group_by_length=grouped)
    pairs = module.pairs["train"]
    order = [i for batch in module._loader("train", shuffle=True) for i in batch["index"].tolist()]
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in pairs]
    expected = length_grouped_order(lengths, 8, 0, 0) if grouped else shuffled_order(len(pairs), 0, 0)
    assert order == expected and len(set(lengths)) > 1
    # held-out batches keep the file's order either way
    assert [i for b in module._loader("heldout", shuffle=False) for i in b["index"].tolist()] == list(range(len(module.pairs["heldout"])))


def test_a_policys_sequence_log_probs_are_each_response_scored_alone(setup):
    """Evaluation's KL reads ModelPolicy.sequence_logprobs: summed over each response's own tokens,
    whatever the padding of the batch it shares."""
    from rlhf_lab.policy import ModelPolicy

    model_dir, tokenizer, _ = setup
    model = load_policy(str(model_dir)).eval()
    prompts = ["the river is", "tell me about the cat over there please"]
    responses = [encode_response(tokenizer, "lovely and wide ."), encode_response(tokenizer, "bad .")]
    got = ModelPolicy(model, tokenizer, batch_size=2).sequence_logprobs(prompts, responses)
    expected = [direct_logp(model, tokenizer, encode_prompt(tokenizer, p), r)[0] for p, r in zip(prompts, responses)]
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-4, rtol=1e-5)
