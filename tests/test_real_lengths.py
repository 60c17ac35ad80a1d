"""Less work per real token: SFT batches of whole sequences whose loss projects only the response
positions, batches grouped by length, dropout off by default. Each must leave the maths as it was:
the per-token loss equals that of each demonstration scored alone."""

from __future__ import annotations

import random
import statistics

import pytest
import torch

from rlhf_lab.data import collate_demonstrations
from rlhf_lab.resume import LENGTH_WINDOW, length_grouped_order, shuffled_order
from rlhf_lab.stages.sft import demonstration_loader, response_nll

VOCAB = 97


def _model(family: str, vocab: int = VOCAB):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        config = AutoConfig.for_model("gpt2", vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    else:
        config = AutoConfig.for_model(family, vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(config).eval()


def _nll_alone(model, prompt: list[int], response: list[int]) -> list[float]:
    """Each response token's NLL from a full forward of its demonstration alone, all logits projected."""
    ids = torch.tensor([prompt + response])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return [-float(logp[len(prompt) - 1 + j, token]) for j, token in enumerate(response)]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_response_nll_of_a_padded_batch_equals_each_demonstration_alone(family):
    model = _model(family)
    rng = random.Random(1)
    prompts = [[rng.randrange(1, VOCAB) for _ in range(n)] for n in (3, 11, 1, 7)]
    responses = [[rng.randrange(1, VOCAB) for _ in range(n)] for n in (5, 2, 9, 1)]
    batch = collate_demonstrations(prompts, responses, pad_id=0)
    assert batch["input_ids"].shape == (4, 13)  # the longest prompt + response, not 11 + 9
    with torch.no_grad():
        nll = response_nll(model, batch)
    expected = [x for p, r in zip(prompts, responses) for x in _nll_alone(model, p, r)]
    assert nll.shape == (sum(map(len, responses)),)
    torch.testing.assert_close(nll, torch.tensor(expected), atol=2e-5, rtol=1e-5)


def test_only_the_response_positions_reach_the_output_layer():
    model = _model("gpt2")
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    batch = collate_demonstrations([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    response_nll(model, batch)
    assert seen == [(5, 32)]  # 2 + 3 response tokens, not 2 rows x 5 positions


def test_a_demonstration_without_prompt_scores_all_but_its_first_token():
    batch = collate_demonstrations([[], [4]], [[7, 8, 9], [5]], pad_id=0)
    assert batch["targets"].tolist() == [8, 9, 5]
    assert list(zip(batch["target_rows"].tolist(), batch["target_cols"].tolist())) == [(0, 0), (0, 1), (1, 0)]


def test_length_grouped_batches_hold_every_item_once_and_far_less_padding():
    rng = random.Random(0)
    lengths = [rng.randint(20, 500) for _ in range(1000)]
    batch = 32
    grouped, plain = length_grouped_order(lengths, batch, seed=3, epoch=0), shuffled_order(len(lengths), 3, 0)
    assert sorted(grouped) == list(range(1000))

    def padding(order):
        batches = [order[i : i + batch] for i in range(0, len(order), batch)]
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches) / sum(lengths)

    assert padding(grouped) < 0.1 < 0.5 < padding(plain)
    assert grouped[-(1000 % batch):] == sorted(grouped[-(1000 % batch):], key=lengths.__getitem__)  # the partial batch stays last
    assert length_grouped_order(lengths, batch, seed=3, epoch=0) == grouped  # an epoch's order is fixed: resume depends on it
    assert length_grouped_order(lengths, batch, seed=3, epoch=1) != grouped
    # Batches are shuffled across windows: the first batch is not the shortest of the first window.
    first_window = shuffled_order(len(lengths), 3, 0)[: batch * LENGTH_WINDOW]
    assert sorted(grouped[:batch]) != sorted(sorted(first_window, key=lengths.__getitem__)[:batch])


def test_the_loader_groups_only_when_asked_and_only_when_shuffled():
    rng = random.Random(0)
    examples = [([1] * rng.randint(1, 40), [2] * rng.randint(1, 40)) for _ in range(256)]

    def widths(**kwargs):
        return [b["input_ids"].shape[1] for b in demonstration_loader(examples, 0, 16, seed=0, **kwargs)]

    assert sum(widths(shuffle=True, group_by_length=True)) < 0.75 * sum(widths(shuffle=True))
    assert widths(shuffle=False, group_by_length=True) == widths(shuffle=False)


def _reference_samples(model, prompts, k, eos, max_new_tokens, seed, temperature=1.0):
    """The plainest sampler: the k copies of each prompt side by side, the whole prefix recomputed
    every step, every row kept to the end, Gumbel noise drawn for the whole batch each step."""
    from rlhf_lab.data import pad_left
    from rlhf_lab.ops.sampling import gumbel_noise
    from rlhf_lab.ops.sequence import position_ids_from_mask

    ids, mask = pad_left([p for p in prompts for _ in range(k)], pad_id=0)
    generator = torch.Generator().manual_seed(seed)
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    tokens, logps = [], []
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, -1].float()
        logp = torch.log_softmax(logits / temperature, -1)
        token = (logp + gumbel_noise(logp.shape, generator, logp.device)).argmax(-1)
        chosen = logp.gather(-1, token[:, None]).squeeze(1)
        token = torch.where(done, torch.zeros_like(token), token)
        tokens.append(token.tolist())
        logps.append(torch.where(done, torch.zeros_like(chosen), chosen).tolist())
        done |= token == eos
        ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    rows = []
    for row in range(ids.shape[0]):
        seq = [(step[row], logps[t][row]) for t, step in enumerate(tokens)]
        end = next((t + 1 for t, (token, _) in enumerate(seq) if token == eos), len(seq))
        rows.append(seq[:end])
    return rows


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_one_prefill_for_k_samples_and_dropped_rows_sample_what_the_plain_loop_samples(family):
    from rlhf_lab.data import pad_left
    from rlhf_lab.rollout import generate

    # Eight tokens: EOS (3) is likely, so rows end at different steps and are dropped mid-rollout.
    model = _model(family, vocab=8)
    with torch.no_grad():
        rng = random.Random(2)
        prompts = [[rng.randrange(4, 8) for _ in range(n)] for n in (6, 2, 9)]
        k, new_tokens = 4, 14
        expected = _reference_samples(model, prompts, k, eos=3, max_new_tokens=new_tokens, seed=5)
        ids, mask = pad_left(prompts, pad_id=0)
        gen = generate(model, ids, mask, eos_token_id=3, pad_token_id=0, max_new_tokens=new_tokens,
                       generator=torch.Generator().manual_seed(5), samples_per_prompt=k)
    lengths = [len(row) for row in expected]
    assert len(set(lengths)) > 2 and min(lengths) < new_tokens // 2  # rows did end at different times
    assert gen.response_ids.shape[0] == len(prompts) * k
    for row, want in enumerate(expected):
        n = int(gen.response_mask[row].sum())
        assert gen.response_ids[row, :n].tolist() == [t for t, _ in want], f"row {row}"
        torch.testing.assert_close(gen.logprobs[row, :n], torch.tensor([lp for _, lp in want]), atol=1e-4, rtol=1e-4)
        assert bool(gen.has_eos[row]) == (want[-1][0] == 3)


def test_dropped_rows_leave_the_forward_batch():
    from rlhf_lab.data import pad_left
    from rlhf_lab.rollout import FINISHED_CHECK_EVERY, generate

    model = _model("gpt2", vocab=8)
    widths = []
    model.register_forward_hook(lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    ids, mask = pad_left([[5, 6, 7], [4, 5]], pad_id=0)
    gen = generate(model, ids, mask, eos_token_id=3, pad_token_id=0, max_new_tokens=24,
                   generator=torch.Generator().manual_seed(0), samples_per_prompt=8)
    assert widths[0] == 2  # the prefill: each prompt once
    ended = gen.response_mask.sum(1)
    for step, width in enumerate(widths[1:], start=1):
        # after each check, the batch holds exactly the rows that had not ended by then
        checked = step - step % FINISHED_CHECK_EVERY
        if checked:
            assert width == int((ended > checked).sum()), f"step {step}"
    assert widths[-1] < 16


@pytest.mark.parametrize("bf16_gflops, refused", [(1.0, True), (400.0, False)])
def test_bf16_autocast_is_refused_on_a_cpu_that_emulates_it(monkeypatch, bf16_gflops, refused):
    from omegaconf import OmegaConf

    from rlhf_lab import training
    from rlhf_lab.errors import RlhfLabError

    monkeypatch.setattr(training, "matmul_gflops", lambda dtype, **_: bf16_gflops if dtype == torch.bfloat16 else 180.0)
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "bf16-mixed"},
                            "model": {"lora": {"r": 0}}})
    if refused:
        with pytest.raises(RlhfLabError, match=r"trainer.precision=bf16-mixed: .* 1.0 GFLOP/s against 180 in fp32 .* use trainer.precision=32-true"):
            training.check_trainer_config(cfg)
    else:
        assert training.check_trainer_config(cfg).world_size == 1
    cfg.trainer.precision = "32-true"  # fp32 never asks
    monkeypatch.setattr(training, "matmul_gflops", lambda *a, **k: pytest.fail("fp32 measured nothing"))
    training.check_trainer_config(cfg)


@pytest.mark.parametrize("overrides, grouped, dropout_off", [([], True, True), (["sft.group_by_length=false", "sft.disable_dropout=false"], False, False)])
def test_the_sft_stage_trains_with_its_speed_settings(tmp_path, refused, monkeypatch, overrides, grouped, dropout_off):
    """The SFT builder hands sft.group_by_length to the loader and sft.disable_dropout to the model (the
    unit tests above cover what each does; this one that a run reaches them)."""
    import lightning.pytorch as pl

    import rlhf_lab.stages.sft as sft

    seen, loader = {}, sft.demonstration_loader

    def recording_loader(*args, **kwargs):
        if args[3]:  # the shuffled training loader, not the validation one
            seen["group_by_length"] = kwargs.get("group_by_length")
        return loader(*args, **kwargs)

    def trap(trainer, module, *args, **kwargs):
        seen["dropout"] = [m.p for m in module.model.modules() if isinstance(m, torch.nn.Dropout)]
        raise AssertionError("stop before training")

    monkeypatch.setattr(sft, "demonstration_loader", recording_loader)
    monkeypatch.setattr(pl.Trainer, "fit", trap)
    refused(["stop_after=sft", "logger=csv", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", *overrides])
    assert seen["group_by_length"] is grouped
    assert seen["dropout"] and all(p == 0 for p in seen["dropout"]) is dropout_off and any(p > 0 for p in seen["dropout"]) is not dropout_off


def test_rollouts_draw_prompts_of_similar_length_and_every_prompt_once_a_pass():
    from rlhf_lab.algos.on_policy import CyclingSampler

    rng = random.Random(0)
    lengths = [rng.randint(30, 470) for _ in range(512)]
    batch = 8
    grouped = list(CyclingSampler(512, 2 * 512, seed=3, lengths=lengths, batch_size=batch))
    plain = list(CyclingSampler(512, 2 * 512, seed=3))
    for order in (grouped, plain):
        assert sorted(order[:512]) == sorted(order[512:]) == list(range(512))  # each pass draws every prompt once
    assert grouped[:512] != grouped[512:]  # a new arrangement every pass

    def padding(order):  # left padding of each rollout: positions its longest prompt adds to the others
        rollouts = [order[i : i + batch] for i in range(0, len(order), batch)]
        return sum(max(lengths[j] for j in r) * len(r) - sum(lengths[j] for j in r) for r in rollouts) / sum(lengths[j] for j in order)

    assert padding(grouped) < 0.05 < 0.5 < padding(plain)
    # the rollouts themselves come in random order, not sorted by length
    means = [statistics.mean(lengths[j] for j in grouped[i : i + batch]) for i in range(0, 512, batch)]
    assert means != sorted(means) and means != sorted(means, reverse=True)
