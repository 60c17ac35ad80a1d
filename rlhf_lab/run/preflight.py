"""The pre-flight: what the machine and the data decide before any training, called explicitly by the
experiment. The trainer's devices and processes, the memory of the policy stage, and every prompt,
demonstration and dataset record against the model's positions.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Optional

from rlhf_lab.errors import RlhfLabError

log = logging.getLogger(__name__)


def check_trainer(plan, worker: bool):
    """The trainer config built once (a bad accelerator, device, precision or strategy stops here), and
    the checks of a run over several processes; returns the :class:`~rlhf_lab.training.TrainerPlan`.

    A process another launcher started as one of several ranks (torchrun, srun) is refused: each would
    run the whole experiment (rank 0 starts the ranks itself, :mod:`rlhf_lab.distributed`).
    """
    from rlhf_lab.training import check_global_batches, check_trainer_config

    trainer_plan = check_trainer_config(plan.cfg)
    outside = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if not worker and outside > 1:
        raise RlhfLabError(
            f"this process was started as rank {os.environ.get('RANK', '?')} of {outside} by another launcher "
            "(torchrun, srun with several tasks, ...): rlhf_lab starts its own processes; start the command "
            "once, with trainer=ddp or trainer.devices=N trainer.strategy=ddp"
        )
    world = trainer_plan.world_size
    if world > 1:
        rounds = plan.settings["loop"].rounds
        if rounds > 1:
            raise RlhfLabError(f"loop.rounds={rounds} runs in one process for now: drop trainer.devices/trainer.strategy or run one round")
        rule = getattr(plan.settings.get("feedback"), "selection", "random")
        if rule != "random" and plan.uses_preferences:
            raise RlhfLabError(f"feedback.selection={rule} trains its ensembles in one process for now: drop trainer.devices/trainer.strategy")
        keys = ["algo.batch_size", "algo.rollout_batch_size", "algo.minibatch_size"]
        keys += ["sft.batch_size"] if "sft" in plan.route and plan.settings["sft"].enabled else []
        keys += ["reward.batch_size"] if "reward_model" in plan.route else []
        check_global_batches(plan.cfg, world, keys)
    return trainer_plan


def check_model(base: Path, tokenizer, key: str = "model.name_or_path") -> None:
    """Refuse a starting model that cannot be a policy: one that is not a causal language model with a
    generation head (a saved ``BertModel`` would load with a fresh head and attention that sees the
    future, train, and fail only in evaluation), or whose tokenizer has ids its embedding lacks."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(str(base))
    architectures = list(getattr(config, "architectures", None) or [])
    head = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (architectures and not any(a.endswith(head) for a in architectures)):
        saved = f" (saved as {', '.join(architectures)})" if architectures else ""
        raise RlhfLabError(
            f"{key}={base}: a {config.model_type} model{saved} is not a causal language model with a generation head; "
            "give one saved as *ForCausalLM or *LMHeadModel (GPT-2, Llama, Qwen2, ...)"
        )
    if getattr(config, "is_encoder_decoder", False) or (hasattr(config, "is_decoder") and config.model_type in _ENCODERS and not config.is_decoder):
        raise RlhfLabError(f"{key}={base}: a {config.model_type} model whose attention is not causal (is_decoder is false) cannot be a policy")
    vocabulary = getattr(config, "vocab_size", None) or getattr(config.get_text_config(), "vocab_size", None)
    if vocabulary is not None and len(tokenizer) > vocabulary:
        raise RlhfLabError(
            f"{key}={base}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only {vocabulary}: "
            "the tokenizer is not this model's (or resize the embedding and save the model again)"
        )


_ENCODERS = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "bert-generation", "data2vec-text", "xmod")
"""Families whose causal-LM class is an encoder run as a decoder only when ``is_decoder`` says so."""


def check_memory(plan, trainer_plan, base: Path) -> None:
    """Refuse a model whose policy stage cannot fit the device even without activations."""
    from rlhf_lab import memory
    from rlhf_lab.training import inference_device

    lora, dtype = plan.lora, plan.settings["model"].dtype
    parameters, trainable = memory.count_parameters(str(base), lora)
    est = memory.estimate(
        parameters, trainable, dtype, reference=lora is None,
        reward_model=plan.reward_models_held, critic=hasattr(plan.settings["algo"], "critic_init"),
        shards=trainer_plan.world_size if plan.shards_weights else 1,
    )
    device = inference_device(plan.cfg)
    available = memory.device_memory_bytes(device)
    log.info("memory: the policy stage needs at least %.2f GiB of %.1f GiB on %s", est.total / memory.GIB, available / memory.GIB, device)
    if est.total > available:
        raise RlhfLabError(memory.refusal(est, available, device, dtype, lora is not None))


@dataclasses.dataclass(frozen=True)
class FittedTask:
    """The task after the length pass: its prompts and demonstrations, the limits when ``data.truncate``
    cuts (else None), and the counts of what was cut."""

    task: object
    limits: Optional[object]
    counts: dict
    longest: dict = dataclasses.field(default_factory=dict)
    """:attr:`rlhf_lab.lengths.LengthCheck.longest` (empty when the model's positions are unbounded)."""


def positions_of(base: Path) -> Optional[int]:
    """The starting model's number of positions (None: unbounded)."""
    from transformers import AutoConfig

    from rlhf_lab.lengths import model_positions

    return model_positions(AutoConfig.from_pretrained(str(base)))


def check_lengths(plan, task, tokenizer, feedback, base: Path) -> FittedTask:
    """Every prompt, demonstration and dataset preference record against the length limits, before any
    training: stop at the longest offender, or (``data.truncate``) cut and count."""
    from transformers import AutoConfig

    from rlhf_lab.lengths import LengthCheck, LengthLimits, model_positions

    positions = model_positions(AutoConfig.from_pretrained(str(base)))
    if positions is None:
        return FittedTask(task, None, {})
    data = plan.settings["data"]
    max_new = max(s.max_new_tokens for s in (plan.candidate_sampling, plan.settings["eval"].sampling))
    if max_new >= positions:
        raise RlhfLabError(f"max_new_tokens={max_new} (algo.sampling or eval.sampling) leaves no room for a prompt in the model's {positions} positions")
    limits = LengthLimits(positions, max_new, data.max_prompt_tokens, data.max_response_tokens)
    check = LengthCheck(tokenizer, limits, data.truncate)
    fitted = _fit_task(plan, task, tokenizer, check)
    if plan.uses_preferences and not plan.components["feedback"].traits["needs_candidates"]:
        _check_records(plan, fitted, tokenizer, feedback, check)
    check.raise_if_over()
    return FittedTask(fitted, limits if data.truncate else None, check.log_counts(), dict(check.longest))


def _fit_task(plan, task, tokenizer, check):
    """The task with its prompts and demonstrations checked (and, truncating, cut)."""
    from rlhf_lab.data import encode_response

    name = plan.settings["task"].name

    def where(prompt: str) -> str:
        return task.sources.get(prompt, f"task '{name}'")

    def fit_prompts(prompts: list[str]) -> list[str]:
        kept = [check.prompt(p, where(p)) for p in prompts]
        return [p for p in kept if p is not None]

    def fit_demonstrations(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        kept = []
        for prompt, response in pairs:
            fitted = check.prompt(prompt, where(prompt))
            if fitted is not None:
                check.response_ids(fitted, encode_response(tokenizer, response), where(prompt), "demonstration")
                kept.append((fitted, response))
        return kept

    train_prompts, eval_prompts = fit_prompts(task.train_prompts), fit_prompts(task.eval_prompts)
    sft_train = fit_demonstrations(task.sft_train) if plan.settings["sft"].enabled else task.sft_train
    return dataclasses.replace(task, train_prompts=train_prompts, eval_prompts=eval_prompts, sft_train=sft_train,
                               sft_eval=fit_demonstrations(task.sft_eval))


def _check_records(plan, task, tokenizer, feedback, check) -> None:
    """Records read from files, checked now, not after SFT has been paid for."""
    from rlhf_lab.data import encode_responses

    settings = plan.settings["feedback"]
    source_path = getattr(settings, "path", None) or settings.name
    records = [r for split in ("train", "heldout") for r in feedback.collect([], [], kind=plan.preference_kind, seed=plan.cfg.seed, split=split)]
    task_prompts, total = set(task.train_prompts) | set(task.eval_prompts), len(records)
    shared = sum(r.prompt in task_prompts for r in records)
    # One batched call of the fast tokenizer for every text, not one call per text.
    check.encode_prompts([r.prompt for r in records])
    texts = [text for r in records if r.response_ids is None for text in r.responses]
    encoded = iter(encode_responses(tokenizer, texts))
    for record in records:
        spot = f"{source_path} ({record.meta.get('source', 'a record')})"
        fitted = check.prompt(record.prompt, spot)
        ids_list = record.response_ids or [next(encoded) for _ in record.responses]
        kept = [len(check.response_ids(fitted, ids, spot, "preference response")) for ids in (ids_list if fitted is not None else ())]
        if kept:  # a reward-model batch may hold a record's prompt once and all its responses after it
            check.note("preference record", check.prompt_tokens(fitted) + sum(kept))
            check.note("preference responses", len(kept))
    if total and not shared:
        # The policy trains and is evaluated on the task's prompts, not the file's: say so.
        log.warning(
            "none of the %d preference records' prompts is a prompt of task '%s': the reward model (or DPO) "
            "learns from %s, but the policy trains and is evaluated on the task's prompts; "
            "for the file's own prompts use task=dataset task.path=%s", total, plan.settings["task"].name, source_path, source_path,
        )


def check_plugin_hooks(plan) -> None:
    """Every plugin's ``rlhf_lab_callbacks`` called once for each stage this run trains, before any of
    them starts, so a hook that raises or returns something other than Lightning callbacks is named now
    rather than after hours of SFT (:func:`rlhf_lab.training.plugin_callbacks`). Loggers are checked
    where each stage builds them: building one may open a run on a tracking server."""
    from rlhf_lab.training import plugin_callbacks

    for stage in trained_stages(plan):
        plugin_callbacks(plan.cfg, stage)


def check_given_reward(plan) -> None:
    """A reward model (or ensemble) given by ``reward.path``: there, and holding ``reward.ensemble_size``
    members if that is set; before any work (the model is loaded only when the policy stage starts)."""
    from rlhf_lab.run.builders import reward_model

    if "reward_model" in plan.route and plan.builders["reward_model"] is reward_model.given:
        reward_model.given_members(plan.settings["reward"])


def trained_stages(plan) -> list[str]:
    """The ``Trainer`` stages this run fits: SFT unless disabled, the reward model (each member of an
    ensemble) unless given, the policy unless the run stops before it or the algorithm trains nothing (best-of-n)."""
    from rlhf_lab.run.builders import reward_model

    stages = ["sft"] if "sft" in plan.route and plan.settings["sft"].enabled else []
    if "reward_model" in plan.route and plan.builders["reward_model"] is not reward_model.given:
        stages.append("reward_model")
        stages += [f"reward_model_member{k}" for k in range(1, getattr(plan.settings["reward"], "ensemble_size", 1))]
    if plan.stop_after is None and plan.components["algo"].traits["trains_policy"]:
        stages.append("policy")
    return stages
