"""TRL's side of benchmarks/real_lengths.py: the same data, models, batch sizes and steps through TRL's
trainers, in TRL's best configuration on a CPU (imported by a real_lengths worker for ``--trl``).

Best, not default, where TRL offers better, and every such choice is in :data:`DIFFERENCES`:

- batches of similar length (``train_sampling_strategy="group_by_length"``, transformers' sampler);
- dropout off everywhere (TRL turns it off itself in DPO and the reward model; in SFT it offers no
  switch, so the model is loaded with dropout off, as rlhf_lab's ``sft.disable_dropout`` does);
- DPO's reference log-probs computed once before training (``precompute_ref_log_probs=True``);
- activation checkpointing as TRL defaults it (on: ``gradient_checkpointing=True`` in every TRL
  config) and off (its fastest); rlhf_lab's side runs both too (``model.gradient_checkpointing``);
- padding-free batches where TRL has them (SFT, DPO): a row per batch, position ids restarting per
  sequence. There is no flash attention on a CPU, so transformers builds a block-diagonal mask over
  the packed row for SDPA: correct, but attention then spans the whole packed row. Both settings run
  (``padding_free`` variants) and the table says which is faster.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

DIFFERENCES = {
    "all": [
        "activation checkpointing: TRL's default is on (gradient_checkpointing=True), rlhf_lab's off "
        "(model.gradient_checkpointing=false); rows marked ckpt have it on, rows marked no ckpt off, on either side",
        "activation: rlhf_lab runs GPT-2's tanh GELU as torch's one kernel (models.loading.fuse_activations), TRL "
        "loads the model with plain from_pretrained",
    ],
    "sft": [
        "loss: both on the response tokens only (TRL completion_only_loss on a prompt/completion dataset)",
        "dropout: off on both (TRL has no switch: the model is loaded with every dropout at 0)",
        "batches: both group by length (rlhf_lab sft.group_by_length; TRL train_sampling_strategy=group_by_length); "
        "rlhf_lab projects only the response positions onto the vocabulary, TRL every position",
    ],
    "reward": [
        "batches: rlhf_lab forwards each record's prompt once with both responses after it (reward.share_prompt); TRL "
        "forwards chosen and rejected as two sequences; both group by length",
        "dropout: off on both (TRL disable_dropout=True, its default)",
    ],
    "dpo": [
        "reference log-probs: computed once before training on both (TRL precompute_ref_log_probs=True); steps only are timed",
        "batches: both group by length; rlhf_lab puts each response after its prompt and projects only response "
        "positions; TRL likewise concatenates chosen and rejected, and projects every position",
        "dropout: off on both (TRL disable_dropout=True, its default)",
    ],
}


def _callback(timer):
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timer["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > 1:  # the first step pays for allocation and kernel selection
                timer["seconds"].append(time.perf_counter() - timer["start"])

    return Steps()


def _args(Config, root: Path, steps: int, batch: int, variant: dict, **extra):
    # TRL turns activation checkpointing on by default (less memory, a third more compute); the
    # variant without it is TRL's fastest configuration
    extra = {"max_length": 512, "remove_unused_columns": False, "gradient_checkpointing": variant.get("gradient_checkpointing", True), **extra}
    return Config(output_dir=str(root / "trl_output"), report_to="none", save_strategy="no", eval_strategy="no",
                  logging_strategy="no", disable_tqdm=True, bf16=False, fp16=False, use_cpu=True, seed=0,
                  lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, per_device_train_batch_size=batch,
                  max_steps=steps + 1, train_sampling_strategy="group_by_length", **extra)


def _policy(model_dir: str):
    from transformers import AutoModelForCausalLM

    from rlhf_lab.models.loading import disable_dropout

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    disable_dropout(model)
    return model


def trainer(root: Path, shape: str, what: str, steps: int, batch: int, variant: dict):
    """(TRL trainer, step timer) for ``what`` on the benchmark's data and model of ``shape``."""
    import trl
    from datasets import Dataset

    from rlhf_lab.data import RESPONSE_SEPARATOR, encode_prompt, encode_response
    from rlhf_lab.models.loading import load_tokenizer

    model_dir = str(root / shape)
    tokenizer = load_tokenizer(model_dir)
    data = json.loads((root / "data.json").read_text())
    timer = {"seconds": []}
    callbacks = [_callback(timer)]
    padding_free = bool(variant.get("padding_free", False))
    if what == "sft":
        rows = Dataset.from_list([{"prompt": r["prompt"], "completion": RESPONSE_SEPARATOR + r["chosen"]} for r in data])
        # the records already fit 512 positions; TRL enforces max_length only with packing when padding-free
        extra = {"max_length": None} if padding_free else {}
        args = _args(trl.SFTConfig, root, steps, batch, variant, learning_rate=1e-4, padding_free=padding_free, packing=False, **extra)
        return trl.SFTTrainer(model=_policy(model_dir), args=args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks), timer
    if what == "dpo":
        # "length" feeds transformers' length-grouped sampler (the characters of the pair: what it sorts by)
        rows = Dataset.from_list([{"prompt": r["prompt"], "chosen": RESPONSE_SEPARATOR + r["chosen"], "rejected": RESPONSE_SEPARATOR + r["rejected"],
                                   "length": len(r["prompt"]) + max(len(r["chosen"]), len(r["rejected"]))} for r in data[:-8]])
        args = _args(trl.DPOConfig, root, steps, batch, variant, learning_rate=1e-5, beta=0.1, loss_type=["sigmoid"], max_grad_norm=1.0,
                     precompute_ref_log_probs=True, padding_free=padding_free)
        return trl.DPOTrainer(model=_policy(model_dir), ref_model=_policy(model_dir), args=args, train_dataset=rows,
                              processing_class=tokenizer, callbacks=callbacks), timer
    if what == "reward":
        from transformers import AutoModelForSequenceClassification

        def ids(prompt: str, response: str) -> list[int]:
            return encode_prompt(tokenizer, prompt) + encode_response(tokenizer, response)

        pairs = [(ids(r["prompt"], r["chosen"]), ids(r["prompt"], r["rejected"])) for r in data[:-8]]
        rows = Dataset.from_list([{"chosen_ids": c, "rejected_ids": j, "length": max(len(c), len(j))} for c, j in pairs])
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        args = _args(trl.RewardConfig, root, steps, batch, variant, learning_rate=1e-5, max_grad_norm=0.0)
        return trl.RewardTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer, callbacks=callbacks), timer
    raise ValueError(f"no TRL side for {what}")
