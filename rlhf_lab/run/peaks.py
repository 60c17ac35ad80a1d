"""Each training stage's estimated peak memory, logged before any training.

The pre-flight's refusal (:func:`rlhf_lab.run.preflight.check_memory`) counts weights and training
state only, a bound that holds whatever the batch. Here every stage on the route also gets its
activations, at its batch size and the longest items of this run's data after the length pass (a
length-grouped batch of the longest items is the stage's largest); items the run samples itself
(candidates, rollouts) are counted at their ``max_new_tokens``. A stage whose estimate exceeds the
device's memory gets a warning naming the settings that lower it; the run still starts, because the
estimate is an estimate (within 25% of the measured peak on the benchmark's ladder,
benchmarks/real_lengths.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def stage_peaks(plan, trainer_plan, longest: dict, base: Path) -> list:
    """:class:`rlhf_lab.memory.StagePeak` of each training stage on the route (none when the data's
    lengths are unknown: a model with unbounded positions)."""
    from rlhf_lab import memory
    from rlhf_lab.activation_memory import probe_or_none

    if not longest.get("prompt"):
        return []
    model, lora, world = plan.settings["model"], plan.lora, trainer_plan.world_size
    dtype, checkpointing = model.dtype, model.gradient_checkpointing
    parameters, trainable = memory.count_parameters(str(base), lora)
    policy = probe_or_none(str(base), dtype=dtype, lora=lora)
    per_process = lambda n: max(1, -(-n // world))  # noqa: E731  (batch sizes are global)
    prompt, peaks = longest["prompt"], []

    if "sft" in plan.route and plan.settings["sft"].enabled and longest.get("demonstration sequence"):
        rows = per_process(plan.settings["sft"].batch_size)
        peaks.append(memory.training_peak("sft", parameters, trainable, dtype, policy, rows=rows, length=longest["demonstration sequence"],
                                          read_tokens=rows * longest["demonstration"], checkpointing=checkpointing))
    response = longest.get("preference response") or plan.candidate_sampling.max_new_tokens
    sequence = longest.get("preference response sequence") or prompt + response
    if "reward_model" in plan.route and plan.learned_reward:
        peaks.append(_reward_peak(plan, longest, parameters, trainable, base, per_process, prompt, response, sequence))
    algo, optimises = plan.settings["algo"], plan.stop_after is None and plan.components["algo"].traits["trains_policy"]
    if "preferences" in plan.consumes and optimises:
        rows = 2 * per_process(algo.batch_size)
        peaks.append(memory.training_peak(plan.algo_name, parameters, trainable, dtype, policy, rows=rows, length=sequence,
                                          read_tokens=rows * response, checkpointing=checkpointing, frozen_copies=0 if lora else 1))
    if hasattr(algo, "rollout_batch_size") and optimises:
        peaks.append(_policy_peak(plan, trainer_plan, parameters, trainable, policy, per_process, prompt, base))
    return peaks


def _reward_peak(plan, longest, parameters, trainable, base, per_process, prompt, response, sequence):
    from rlhf_lab import memory
    from rlhf_lab.activation_memory import probe_or_none

    reward, dtype = plan.settings["reward"], plan.settings["model"].dtype
    shared = bool(getattr(reward, "share_prompt", False))
    responses = longest.get("preference responses") or getattr(plan.settings.get("feedback"), "responses_per_prompt", 2)
    record = longest.get("preference record") or prompt + responses * response
    profile = probe_or_none(str(base), dtype=dtype, value=True, share_prompt=shared, lora=plan.lora)
    records = per_process(reward.batch_size)
    rows, length = (records, record) if shared else (records * responses, sequence)
    return memory.training_peak("reward model", parameters, trainable, dtype, profile, rows=rows, length=length, read_tokens=0,
                                checkpointing=plan.settings["model"].gradient_checkpointing)


def _policy_peak(plan, trainer_plan, parameters, trainable, policy, per_process, prompt, base):
    from rlhf_lab import memory
    from rlhf_lab.activation_memory import probe_or_none

    algo, model = plan.settings["algo"], plan.settings["model"]
    critic = hasattr(algo, "critic_init")
    est = memory.estimate(parameters, trainable, model.dtype, reference=plan.lora is None,
                          reward_model=plan.reward_models_held, critic=critic,
                          shards=trainer_plan.world_size if plan.shards_weights else 1)
    rollout_rows = per_process(algo.rollout_batch_size * getattr(algo, "samples_per_prompt", 1))
    update_rows = min(rollout_rows, per_process(getattr(algo, "minibatch_size", rollout_rows)))
    length = prompt + algo.sampling.max_new_tokens
    critic_profile = probe_or_none(str(base), dtype=model.dtype, value=True, lora=plan.lora) if critic else None
    return memory.policy_stage_peak(est, policy, critic_profile, rollout_rows=rollout_rows, rollout_length=length,
                                    update_rows=update_rows, update_length=length, read_tokens=update_rows * algo.sampling.max_new_tokens,
                                    checkpointing=model.gradient_checkpointing)


def log_stage_peaks(plan, trainer_plan, longest: dict, base: Path) -> list:
    """Log each stage's estimated peak; warn for one that exceeds the device's memory."""
    from rlhf_lab import memory
    from rlhf_lab.training import inference_device

    peaks = stage_peaks(plan, trainer_plan, longest, base)
    if not peaks:
        return peaks
    device = inference_device(plan.cfg)
    available = memory.device_memory_bytes(device)
    log.info("memory: estimated peaks at the longest items of the data: %s", "; ".join(p.describe() for p in peaks))
    for peak in peaks:
        if peak.total > available:
            log.warning("memory: the %s stage may need %s at its largest batch, more than the %s of %s; lower its batch size, "
                        "set model.gradient_checkpointing=true, use LoRA (model.lora.r=16) or cut lengths (data.max_prompt_tokens, "
                        "data.max_response_tokens, max_new_tokens)", peak.stage, memory.readable(peak.total), memory.readable(available), device)
    return peaks
