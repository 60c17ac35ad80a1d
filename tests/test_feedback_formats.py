"""Preference files in the formats people publish: each parsed to exact prompts and responses."""

from __future__ import annotations

import json

import pytest

from rlhf_lab.chat import render_prompt
from rlhf_lab.datafiles import read_table
from rlhf_lab.errors import DataError
from rlhf_lab.feedback.dataset import DatasetFeedback, DatasetFeedbackConfig
from rlhf_lab.preference_formats import detect_format, parse_preferences


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory):
    from rlhf_lab.models.loading import load_tokenizer
    from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task

    out = tmp_path_factory.mktemp("toy_base")
    make_toy_task(ToyTaskConfig(num_sft_examples=50), seed=0).build_base_model(out)
    return load_tokenizer(str(out))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def parse(path, **kwargs):
    records, skipped = parse_preferences(read_table(str(path), "feedback.path"), **kwargs)
    return records, skipped


HH_CHOSEN = (
    "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers is popular."
    "\n\nHuman: Something shorter?\n\nAssistant: Try Tom."
)
HH_REJECTED = (
    "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers is popular."
    "\n\nHuman: Something shorter?\n\nAssistant: I don't know, Bartholomew."
)


def test_hh_multi_turn_transcripts_share_the_prompt_up_to_the_last_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    (record,), skipped = parse(path)
    assert record.prompt == (
        "Human: What is a good name for a cat?\n\nAssistant: Whiskers is popular.\n\nHuman: Something shorter?\n\nAssistant:"
    )
    assert record.responses == ["Try Tom.", "I don't know, Bartholomew."]
    assert record.ranking == [0, 1] and not skipped
    assert record.meta["source"] == "hh.jsonl:1"


def test_hh_final_turns_that_share_a_prefix_are_split_at_the_assistant_marker(tmp_path):
    """The shared prefix runs into the responses ("Try T..."): the prompt still ends at 'Assistant:'."""
    chosen = "\n\nHuman: Name?\n\nAssistant: Try Tom."
    rejected = "\n\nHuman: Name?\n\nAssistant: Try Tim."
    (record,), _ = parse(write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected}]))
    assert record.prompt == "Human: Name?\n\nAssistant:"
    assert record.responses == ["Try Tom.", "Try Tim."]


def test_pairwise_prompt_chosen_rejected(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Say hi.", "chosen": " Hi!", "rejected": "Go away."}])
    (record,), _ = parse(path)
    assert (record.prompt, record.responses, record.ranking) == ("Say hi.", ["Hi!", "Go away."], [0, 1])


def test_chat_pairs_without_prompt_render_the_shared_conversation(tmp_path):
    user = {"role": "user", "content": "Name a colour."}
    rows = [{"chosen": [user, {"role": "assistant", "content": "Blue."}], "rejected": [user, {"role": "assistant", "content": "No."}]}]
    (record,), _ = parse(write_jsonl(tmp_path / "c.jsonl", rows))
    assert record.prompt == "User: Name a colour.\n\nAssistant:"
    assert record.responses == ["Blue.", "No."]


def test_chat_pairs_that_differ_before_the_reply_are_refused(tmp_path):
    rows = [{"chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
             "rejected": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "No."}]}]
    with pytest.raises(DataError, match=r"c.jsonl:1: malformed preference record: 'chosen' and 'rejected' differ before their last message"):
        parse(write_jsonl(tmp_path / "c.jsonl", rows))


def test_chat_pairs_with_a_message_prompt_use_the_tokenizer_chat_template(tmp_path, toy_tokenizer):
    tokenizer = toy_tokenizer
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}|{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    rows = [{
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello."}],
        "rejected": [{"role": "assistant", "content": "Hello, how are you today?"}],
    }]
    (record,), _ = parse(write_jsonl(tmp_path / "c.jsonl", rows), chat_tokenizer=tokenizer)
    assert record.prompt == "<system>Be brief.|<user>Hi?|<assistant>"
    assert record.responses == ["Hello.", "Hello, how are you today?"]


def test_k_wise_rankings_and_native_records(tmp_path):
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1], "annotator": "ann", "meta": {"batch": 3}}]
    (record,), _ = parse(write_jsonl(tmp_path / "k.jsonl", rows))
    assert record.preference_pairs() == [(2, 0), (2, 1), (0, 1)]
    assert record.annotator == "ann" and record.meta == {"batch": 3, "source": "k.jsonl:1"}


def test_ratings_one_per_row_group_by_prompt_and_map_column_names(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("question,answer,helpfulness\np,a,3\nq,x,1.5\np,b,5\n")
    records, _ = parse(path, columns={"prompt": "question", "response": "answer", "score": "helpfulness"})
    assert [(r.prompt, r.responses, r.scores) for r in records] == [("p", ["a", "b"], [3.0, 5.0]), ("q", ["x"], [1.5])]


def test_parquet_and_save_to_disk_directories_read_like_jsonl(tmp_path):
    import datasets

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "c", "rejected": "d"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "d"))
    expected = [("p", ["a", "b"]), ("q", ["c", "d"])]
    assert [(r.prompt, r.responses) for r in parse(tmp_path / "p.parquet")[0]] == expected
    assert [(r.prompt, r.responses) for r in parse(tmp_path / "d")[0]] == expected
    assert parse(tmp_path / "p.parquet")[0][1].meta["source"] == "p.parquet: row 2"
    test_split = parse_preferences(read_table(str(tmp_path / "d"), "feedback.path", split="test"))[0]
    assert [(r.prompt, r.responses) for r in test_split] == expected[:1]
    with pytest.raises(DataError, match="has splits \\['test', 'train'\\], not 'validation'"):
        read_table(str(tmp_path / "d"), "feedback.path", split="validation")


@pytest.mark.parametrize(
    "row,problem",
    [
        ({"prompt": "p", "chosen": "a", "rejected": "a"}, "identical chosen and rejected"),
        ({"prompt": "p", "chosen": "a", "rejected": "  "}, "empty 'rejected'"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty 'prompt'"),
    ],
)
def test_a_bad_record_names_file_and_line(tmp_path, row, problem):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, row]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")  # a blank line: line numbers still count it
    with pytest.raises(DataError) as info:
        parse(path)
    assert str(info.value).startswith(f"{path}:3: malformed preference record: {problem}")
    assert "on_bad_record=skip" in str(info.value)


def test_hh_transcripts_that_differ_before_the_last_turn_are_refused(tmp_path):
    rows = [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: b"}]
    with pytest.raises(DataError, match=r"hh.jsonl:1: malformed preference record: no shared '\\n\\nAssistant:' turn"):
        parse(write_jsonl(tmp_path / "hh.jsonl", rows))


def test_skip_counts_bad_records_by_problem(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "a"},
            {"prompt": "q", "chosen": "c", "rejected": "c"}, {"prompt": "r", "chosen": "", "rejected": "c"}]
    records, skipped = parse(write_jsonl(tmp_path / "p.jsonl", rows), on_bad_record="skip")
    assert [r.prompt for r in records] == ["p"]
    assert skipped == {"identical chosen and rejected responses": 2, "empty 'chosen'": 1}


def test_invalid_json_and_changing_column_types_name_the_line(tmp_path):
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    (tmp_path / "a.jsonl").write_text(good + "\n" + '{"prompt": "q", "chosen": \n')
    with pytest.raises(DataError, match=r"a.jsonl:2: not valid JSON"):
        read_table(str(tmp_path / "a.jsonl"), "feedback.path")
    (tmp_path / "b.jsonl").write_text(good + "\n" + json.dumps({"prompt": 3, "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match=r"b.jsonl:2: field 'prompt' is a int here but a str on an earlier line"):
        read_table(str(tmp_path / "b.jsonl"), "feedback.path")


def test_unknown_columns_list_every_format():
    with pytest.raises(ValueError, match="match no preference format.*feedback.columns"):
        detect_format({"question", "answer"}, {})


def test_missing_file_and_unknown_kind_name_the_key(tmp_path):
    with pytest.raises(DataError, match="feedback.path: file 'nope.jsonl' not found"):
        read_table("nope.jsonl", "feedback.path")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="is not a .jsonl, .json, .csv or .parquet file"):
        read_table(str(tmp_path / "x.txt"), "feedback.path")


def test_dataset_source_reads_published_formats_and_counts_skips(tmp_path):
    rows = [{"chosen": HH_CHOSEN.replace("Tom", f"Tom{i}"), "rejected": HH_REJECTED} for i in range(9)] + [{"chosen": HH_CHOSEN, "rejected": HH_CHOSEN}]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    source = DatasetFeedback(DatasetFeedbackConfig(path=str(path), heldout_fraction=0.25, on_bad_record="skip", chat_tokenizer=None), task=None)
    train = source.collect([], [], kind="ranking", seed=0, split="train")
    heldout = source.collect([], [], kind="ranking", seed=0, split="heldout")
    assert (len(train), len(heldout)) == (7, 2)
    assert {r.responses[0] for r in train + heldout} == {f"Try Tom{i}." for i in range(9)}
    assert source.stats == {"feedback/train_skipped": 1}


def test_plain_template_without_a_chat_template():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": " U "}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]
    assert render_prompt(messages) == "System: S\n\nUser: U\n\nAssistant: A\n\nUser: V\n\nAssistant:"
