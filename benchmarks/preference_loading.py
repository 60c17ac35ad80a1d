"""How long a real-sized preference file takes to become training batches: read, parse, tokenise, pair.

Writes a file of synthetic Anthropic HH-RLHF transcripts (multi-turn, a few hundred tokens each, the
shape of the real data) and a byte-level BPE tokenizer with a GPT-2-sized vocabulary trained on it,
then times each step the pipeline takes before the reward model or DPO trains:

    read + parse   datasets reads the JSONL; the hh format splits prompt and responses (preference_formats.py)
    length check   the pre-flight pass over every record (lengths.py)
    reward batches record_loader tokenises every text once and collates all batches (stages/reward.py)
    DPO pairs      the DPO module's (prompt, chosen, rejected) token-id triples (algos/dpo.py)

    python benchmarks/preference_loading.py                  # 3000 dialogues
    python benchmarks/preference_loading.py --rows 10000

Nothing is asserted; the figures are printed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

WORDS = ("the of and to a in is it you that he was for on are with as I his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their time "
         "if will way about many then them write would like so these her long make thing see him two has look more day "
         "could go come did number sound no most people my over know water than call first who may down side been now find").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_hh(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as fh:
        for _ in range(rows):
            history = "".join(
                f"\n\nHuman: {_sentence(rng, rng.randint(8, 30))}\n\nAssistant: {_sentence(rng, rng.randint(20, 60))}"
                for _ in range(rng.randint(1, 3))
            )
            turn = f"{history}\n\nHuman: {_sentence(rng, rng.randint(8, 30))}\n\nAssistant:"
            chosen, rejected = _sentence(rng, rng.randint(20, 80)), _sentence(rng, rng.randint(20, 80))
            fh.write(json.dumps({"chosen": f"{turn} {chosen}", "rejected": f"{turn} {rejected}"}) + "\n")


def build_tokenizer(path: Path, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((json.loads(line)["chosen"] for line in path.open()), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(out)
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from rlhf_lab.algos.dpo import preference_pairs
    from rlhf_lab.data import encode_prompt, encode_responses, record_response_ids
    from rlhf_lab.datafiles import read_table
    from rlhf_lab.preference_formats import parse_preferences
    from rlhf_lab.lengths import LengthCheck, LengthLimits
    from rlhf_lab.rewards.pairwise import PairwiseObjective
    from rlhf_lab.rewards.configs import PairwiseRewardConfig
    from rlhf_lab.stages.reward import record_loader

    with tempfile.TemporaryDirectory() as root:
        path = Path(root) / "hh.jsonl"
        write_hh(path, args.rows)
        tokenizer = build_tokenizer(path, Path(root) / "tok")
        timings: dict[str, list[float]] = {}

        def timed(name, fn):
            start = time.perf_counter()
            value = fn()
            timings.setdefault(name, []).append(time.perf_counter() - start)
            return value

        for _ in range(args.repeats):
            records, _ = timed("read + parse", lambda: parse_preferences(read_table(str(path), "feedback.path")))

            def length_pass():  # as rlhf_lab.run.preflight.check_lengths does it
                check = LengthCheck(tokenizer, LengthLimits(positions=4096, max_new_tokens=256), truncate=False)
                check.encode_prompts([r.prompt for r in records])
                encoded = iter(encode_responses(tokenizer, [t for r in records for t in r.responses]))
                for record in records:
                    prompt = check.prompt(record.prompt, "")
                    for ids in [next(encoded) for _ in record.responses]:
                        check.response_ids(prompt, ids, "", "")
                check.raise_if_over()

            timed("length check", length_pass)
            loader = record_loader(records, PairwiseObjective(PairwiseRewardConfig()), tokenizer, 32, False, 0)
            timed("reward batches", lambda: [batch for batch in loader])
            timed("DPO pairs", lambda: preference_pairs(records, tokenizer))
        tokens = [len(encode_prompt(tokenizer, r.prompt)) + len(ids) for r in records for ids in record_response_ids(tokenizer, r)]
    print(f"{args.rows} HH dialogues, {statistics.mean(tokens):.0f} tokens per prompt+response on average (max {max(tokens)})")
    print(f"{'step':<16}{'median s':>10}{'runs':>6}")
    for name, values in timings.items():
        print(f"{name:<16}{statistics.median(values):>10.2f}{len(values):>6}")
    print(f"{'total':<16}{sum(statistics.median(v) for v in timings.values()):>10.2f}")


if __name__ == "__main__":
    main()
