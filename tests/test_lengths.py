"""Length limits: checked before any training, cut (prompts from the left, responses from the right) and counted on request."""

from __future__ import annotations

import json

import pytest

from rlhf_lab.data import encode_prompt, encode_response
from rlhf_lab.errors import DataError
from rlhf_lab.lengths import LengthCheck, LengthLimits
from rlhf_lab.stages.sft import tokenize_demonstrations

from conftest import read_metrics, run_cli


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from rlhf_lab.models.loading import load_tokenizer
    from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

    out = tmp_path_factory.mktemp("toy_base")
    make_toy_task(ToyTaskConfig(num_sft_examples=50), seed=0).build_base_model(out)
    return out, load_tokenizer(str(out))


def test_limits_by_hand():
    limits = LengthLimits(positions=64, max_new_tokens=20)
    assert limits.prompt_limit == 44 and limits.response_limit(50) == 14
    tighter = LengthLimits(positions=64, max_new_tokens=20, max_prompt_tokens=30, max_response_tokens=10)
    assert tighter.prompt_limit == 30 and tighter.response_limit(50) == 10 and tighter.response_limit(60) == 4


def test_prompts_are_cut_from_the_left_keeping_the_end_of_the_dialogue(toy):
    _, tok = toy
    prompt = "tell me about the cat . tell me about the dog . describe the quiet garden ."
    ids = encode_prompt(tok, prompt)
    check = LengthCheck(tok, LengthLimits(positions=len(ids) + 5 - 3, max_new_tokens=5), truncate=True)
    cut = check.prompt(prompt, "f:1")
    assert cut == tok.decode(ids[3:]) and prompt.endswith(cut) and cut.endswith("describe the quiet garden .")
    assert check.counts == {"data/prompts_truncated": 1}
    assert check.prompt(prompt, "f:1") == cut and check.counts["data/prompts_truncated"] == 1  # each prompt counted once


def test_responses_are_cut_from_the_right_and_lose_their_eos(toy):
    _, tok = toy
    response = encode_response(tok, "the cat is lovely and great .")
    check = LengthCheck(tok, LengthLimits(positions=64, max_new_tokens=5, max_response_tokens=4), truncate=True)
    assert check.response_ids("p", response, "f:1", "demonstration") == response[:4]
    assert tok.eos_token_id not in response[:4] and check.counts == {"data/responses_truncated": 1}
    limits = LengthLimits(positions=64, max_new_tokens=5, max_response_tokens=4)
    ((_, demo),) = tokenize_demonstrations(tok, [("p", "the cat is lovely and great .")], limits)
    assert demo == response[:4]


def test_without_truncate_the_longest_offender_is_named_with_the_settings(toy):
    _, tok = toy
    check = LengthCheck(tok, LengthLimits(positions=16, max_new_tokens=10), truncate=False)
    short, long_ = "tell me about the cat . " * 2, "tell me about the cat . " * 4
    for where, prompt in (("a.jsonl:1", short), ("a.jsonl:2", long_), ("a.jsonl:3", "hi")):
        assert check.prompt(prompt, where) == prompt  # nothing is cut
    with pytest.raises(DataError) as info:
        check.raise_if_over()
    n = len(encode_prompt(tok, long_))
    assert str(info.value).startswith(f"a.jsonl:2: prompt of {n} tokens is over its limit of 6 (the model's 16 positions less max_new_tokens=10)")
    assert "data.truncate=true" in str(info.value) and not check.counts


def test_a_prompt_longer_than_the_model_is_named_as_the_prompt_with_a_positive_limit(toy):
    _, tok = toy
    check = LengthCheck(tok, LengthLimits(positions=16, max_new_tokens=4), truncate=False)
    prompt = "tell me about the cat . " * 6
    n = len(encode_prompt(tok, prompt))
    assert n > 16
    check.response_ids(prompt, encode_response(tok, "the cat ."), "prefs.jsonl:3", "preference response")
    with pytest.raises(DataError) as info:
        check.raise_if_over()
    assert str(info.value).startswith(f"prefs.jsonl:3: prompt (of a preference response) of {n} tokens is over its limit of 15 "
                                      "(the model's 16 positions, less one for the response)"), str(info.value)


def _hh_file(path, turns: int, rows: int = 30):
    lines = []
    for i in range(rows):
        history = "".join("\n\nHuman: tell me about the cat .\n\nAssistant: the cat is lovely ." for _ in range(turns if i == 7 else 0))
        lines.append({"chosen": f"{history}\n\nHuman: and the dog {i} ?\n\nAssistant: the dog is great .",
                      "rejected": f"{history}\n\nHuman: and the dog {i} ?\n\nAssistant: the dog is awful ."})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.mark.slow
def test_cli_a_dialogue_too_long_for_the_model_stops_before_sft_or_is_cut_and_counted(toy, tmp_path, refused):
    model_dir, _ = toy
    prefs = _hh_file(tmp_path / "hh.jsonl", turns=12)
    args = ["task=dataset", f"task.path={prefs}", "feedback=dataset", f"feedback.path={prefs}", f"model.name_or_path={model_dir}",
            "algo=dpo", "algo.epochs=1", "sft.epochs=1", "eval.samples_per_prompt=1", "trainer.progress_bar=none", "logger=csv",
            f"cache_dir={tmp_path / 'cache'}", "eval.sampling.max_new_tokens=20"]
    # task=dataset would cut the longest prompts (run/sizing.py); a user who says data.truncate=false is refused instead
    code, err = refused([*args, "data.truncate=false", f"hydra.run.dir={tmp_path / 'a'}"])
    assert code == 2
    assert f"{prefs}:8: prompt of " in err and "is over its limit of 44" in err
    assert "Traceback" not in err and not (tmp_path / "cache" / "sft").exists()

    cut = run_cli([*args, "data.truncate=true", f"hydra.run.dir={tmp_path / 'b'}"], cwd=tmp_path)
    assert cut.returncode == 0, cut.stderr[-3000:]
    metrics = read_metrics(tmp_path / "b")
    # The one long dialogue, as a task prompt and as a preference record (its prompt is the same text).
    assert metrics["data/prompts_truncated"] == 1 and "data/responses_truncated" not in metrics
    records = [json.loads(line) for split in ("train", "heldout")
               for line in next((tmp_path / "cache" / "preferences").glob(f"*/{split}.jsonl")).read_text().splitlines()]
    long_record = next(r for r in records if r["prompt"].endswith("and the dog 7 ?\n\nAssistant:"))
    assert len(encode_prompt(toy[1], long_record["prompt"])) <= 44


def test_batched_encoding_equals_one_text_at_a_time(toy):
    from rlhf_lab.data import encode_responses

    _, tok = toy
    texts = ["the cat is lovely .", "", "honestly , the quiet garden is dull and ugly ."]
    assert encode_responses(tok, texts) == [encode_response(tok, t) for t in texts]
    check = LengthCheck(tok, LengthLimits(positions=64, max_new_tokens=5), truncate=False)
    check.encode_prompts(["describe the cat .", "what ?"])
    assert check._tokens("what ?") == len(encode_prompt(tok, "what ?"))


def test_the_longest_items_after_fitting_are_remembered_for_the_memory_estimate(toy):
    _, tok = toy
    long_prompt = "tell me about the cat . tell me about the dog . describe the quiet garden ."
    short_prompt = "tell me about the cat ."
    check = LengthCheck(tok, LengthLimits(positions=40, max_new_tokens=30), truncate=True)  # prompts cut to 10 tokens
    fitted = check.prompt(long_prompt, "f:1")
    check.prompt(short_prompt, "f:2")
    assert check.longest["prompt"] == 10 == len(encode_prompt(tok, fitted))
    response = encode_response(tok, "the cat is lovely and great .")
    check.response_ids(short_prompt, response, "f:2", "demonstration")
    # after a 10-token prompt only 30 positions are left: the response is cut to them
    check.response_ids(fitted, response * 6, "f:1", "demonstration")
    assert check.longest["demonstration"] == 30 and check.longest["demonstration sequence"] == 40
    assert "preference response" not in check.longest
