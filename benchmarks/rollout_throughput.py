"""Rollout throughput: rlhf_lab's KV-cache sampler vs recomputing the prefix vs transformers' generate.

Prints sampled tokens per second for each; nothing is asserted. Usage:

    python benchmarks/rollout_throughput.py                       # the toy task's tiny GPT-2
    python benchmarks/rollout_throughput.py --model /path/to/hf-causal-lm --batch-size 32
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from rlhf_lab.data import encode_prompt, pad_left
from rlhf_lab.models.loading import load_policy, load_tokenizer
from rlhf_lab.ops.sampling import sample_next_token
from rlhf_lab.ops.sequence import position_ids_from_mask
from rlhf_lab.rollout import generate
from rlhf_lab.tasks.toy import ToyTaskConfig, make_toy_task


@torch.no_grad()
def generate_without_cache(model, ids, mask, max_new_tokens, generator):
    """The naive loop: every step re-reads the whole prefix (what a KV cache avoids)."""
    for _ in range(max_new_tokens):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, -1]
        token = sample_next_token(logits, 1.0, 0, 1.0, generator)
        ids = torch.cat([ids, token[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(token[:, None])], 1)
    return ids


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local Hugging Face causal LM (default: the toy task's tiny GPT-2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    task = make_toy_task(ToyTaskConfig(), seed=0)
    path = args.model
    if path is None:
        path = tempfile.mkdtemp(prefix="rlhf_lab_bench_")
        task.build_base_model(path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer, model = load_tokenizer(path), load_policy(path).to(device).eval()
    prompts = (task.train_prompts * (args.batch_size // len(task.train_prompts) + 1))[: args.batch_size]
    ids, mask = pad_left([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)
    n_tokens = args.batch_size * args.max_new_tokens
    # EOS is never produced here (-1), so every variant samples exactly max_new_tokens per row.
    gen = torch.Generator(device=device).manual_seed(0)
    rows = {
        "rlhf_lab.rollout.generate (KV cache)": lambda: generate(
            model, ids, mask, eos_token_id=-1, pad_token_id=tokenizer.pad_token_id, max_new_tokens=args.max_new_tokens, generator=gen
        ),
        "naive loop (no cache)": lambda: generate_without_cache(model, ids, mask, args.max_new_tokens, gen),
        "transformers generate (do_sample)": lambda: model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id, top_k=0, top_p=1.0,
        ),
    }
    print(f"device={device} model={path} batch={args.batch_size} new_tokens={args.max_new_tokens} threads={torch.get_num_threads()}")
    for name, fn in rows.items():
        seconds = timed(fn, args.repeats)
        print(f"{name:40s} {seconds * 1000:8.1f} ms/batch {n_tokens / seconds:10.0f} tokens/s")


if __name__ == "__main__":
    main()
