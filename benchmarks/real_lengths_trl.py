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
  (``padding_free`` variants) and the table says which is faster;
- GRPO and RLOO: TRL's own sampler (transformers' ``generate`` with its key/value cache), and its
  continuous-batching generation (``use_transformers_continuous_batching``) as a variant; one
  generation and one gradient step per rollout, as on rlhf_lab's side;
- PPO: TRL 1.12's ``PPOTrainer`` (the last TRL that has one: run with ``--trl-python`` naming an
  environment with ``trl==1.12.0``), which clips no gradients and calls ``gc.collect()`` every update.
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
    "grpo": [
        "rollout: rlhf_lab prefills each prompt once for its k samples, drops ended rows and draws prompts of similar length "
        "(algo.group_by_length); TRL samples k copies of each prompt with transformers' generate",
        "loss: both a token-mean over the rollout (TRL loss_type=bnpo), group-scaled rewards, k3 KL 0.05 to the reference "
        "(TRL's use_bias_correction_kl multiplies it by the importance ratio, 1 with one update per rollout)",
        "dropout: off on both (TRL disable_dropout=True); AdamW eps 1e-5 on both",
    ],
    "rloo": [
        "rollout: as GRPO's",
        "advantages: leave-one-out baseline, not whitened, on both (TRL normalize_advantages=False); KL 0.05 in the reward",
        "dropout: off on both (TRL disable_dropout=True); AdamW eps 1e-5 on both",
    ],
    "ppo": [
        "TRL 1.12's PPOTrainer (later TRL has none); it clips no gradients (rlhf_lab clips to norm 1.0) and calls "
        "gc.collect() every update",
        "rollout: rlhf_lab drops ended rows and draws prompts of similar length; TRL samples with transformers' generate "
        "and then forwards the policy, reference, reward model and critic over the whole padded rollout",
        "updates: both 4 epochs x 2 minibatches of 8, KL k1 0.05 in the reward, critic from the reward model",
    ],
}


ON_POLICY = ("grpo", "rloo", "ppo")
SAMPLES_PER_PROMPT, MAX_NEW_TOKENS, LENGTH_TARGET, PPO_MINIBATCH, PPO_EPOCHS = 8, 256, 50, 8, 4
"""As in real_lengths.py (which imports this module only in a worker)."""


def _callback(timer, skip_first: bool = True):
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        # From the end of one step to the end of the next: TRL's PPOTrainer runs its own loop and calls
        # no on_step_begin; for the other trainers this adds only the next batch's collation.
        def on_train_begin(self, args, state, control, **kwargs):
            timer["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if state.global_step > 1 or not skip_first:  # the first step pays for allocation and kernel selection
                timer["seconds"].append(now - timer["start"])
            timer["start"] = now

    return Steps()


def length_reward(prompts, completions, **kwargs) -> list[float]:
    """TRL's reward-function signature around the rule rlhf_lab's side uses (RuleReward strips both texts too)."""
    from rlhf_lab.rewards.rules import word_count

    return [word_count(p.strip(), c.strip(), target=LENGTH_TARGET) for p, c in zip(prompts, completions)]


def _common(root: Path, batch: int, variant: dict) -> dict:
    """TrainingArguments every TRL config here shares: fp32 on the CPU, no logging, eval, saving or wandb."""
    # TRL turns activation checkpointing on by default (less memory, a third more compute); the
    # variant without it is TRL's fastest configuration
    return dict(output_dir=str(root / "trl_output"), report_to="none", save_strategy="no", eval_strategy="no",
                logging_strategy="no", disable_tqdm=True, bf16=False, fp16=False, use_cpu=True, seed=0,
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, per_device_train_batch_size=batch,
                gradient_checkpointing=variant.get("gradient_checkpointing", True))


def _args(Config, root: Path, steps: int, batch: int, variant: dict, **extra):
    """An offline trainer's config: one untimed warm-up step, batches grouped by length, 512 positions."""
    return Config(**_common(root, batch, variant), remove_unused_columns=False, max_steps=steps + 1,
                  train_sampling_strategy="group_by_length", **{"max_length": 512, **extra})


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
    # an on-policy step is a whole rollout: every one is timed (see real_lengths.measure_training)
    callbacks = [_callback(timer, skip_first=what not in ON_POLICY)]
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
    if what in ("grpo", "rloo"):
        Config, Trainer = {"grpo": (trl.GRPOConfig, trl.GRPOTrainer), "rloo": (trl.RLOOConfig, trl.RLOOTrainer)}[what]
        extra = {"grpo": dict(loss_type="bnpo", scale_rewards="group"), "rloo": dict(normalize_advantages=False)}[what]
        if variant.get("continuous_batching"):
            extra["use_transformers_continuous_batching"] = True
        args = Config(**_common(root, batch * SAMPLES_PER_PROMPT, variant), max_steps=steps, gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
                     num_generations=SAMPLES_PER_PROMPT, max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0,
                     beta=0.05, epsilon=0.2, learning_rate=1e-5, adam_epsilon=1e-5, max_grad_norm=1.0, disable_dropout=True, **extra)
        rows = Dataset.from_list([{"prompt": r["prompt"]} for r in data])
        return Trainer(model=_policy(model_dir), reward_funcs=[length_reward], args=args, train_dataset=rows,
                       processing_class=tokenizer, callbacks=callbacks), timer
    if what == "ppo":
        return _ppo(root, shape, steps, batch, variant, data, tokenizer, callbacks), timer
    raise ValueError(f"no TRL side for {what}")


def _ppo(root: Path, shape: str, steps: int, batch: int, variant: dict, data: list[dict], tokenizer, callbacks):
    """TRL 1.12's PPOTrainer: one rollout of ``batch`` prompts per step, 4 epochs x 2 minibatches."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.data import encode_prompt

    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError:
        import trl

        raise RuntimeError(f"trl {trl.__version__} has no PPOTrainer: pass --trl-python, the Python of an environment with trl==1.12.0") from None
    tokenizer.padding_side = "left"  # TRL's collator pads the prompts it generates from
    rows = Dataset.from_list([{"input_ids": encode_prompt(tokenizer, r["prompt"])} for r in data])
    args = PPOConfig(**_common(root, batch, variant), gradient_accumulation_steps=1, num_mini_batches=batch // PPO_MINIBATCH,
                     num_ppo_epochs=PPO_EPOCHS, total_episodes=steps * batch, local_rollout_forward_batch_size=batch,
                     response_length=MAX_NEW_TOKENS, temperature=1.0, stop_token="eos", missing_eos_penalty=None, kl_coef=0.05,
                     kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, whiten_rewards=False,
                     learning_rate=1e-5, adam_epsilon=1e-5, num_sample_generations=0)
    reward_dir = str(root / f"{shape}_reward")

    def scalar_model():
        return AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)

    return PPOTrainer(args=args, processing_class=tokenizer, model=_policy(str(root / shape)), ref_model=_policy(str(root / shape)),
                      reward_model=scalar_model(), value_model=scalar_model(), train_dataset=rows, callbacks=callbacks)
