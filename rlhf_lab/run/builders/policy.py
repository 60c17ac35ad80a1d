"""The optimised policy: the algorithm built from what it consumes and, if it trains, fitted and cached.

One path for a single run and for every round of a loop: the trained policy is an artifact in the cache,
keyed by the algorithm's config and everything upstream, so an interrupted run resumes its policy stage
from the last checkpoint and a finished one is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rlhf_lab.cache import artifact_key
from rlhf_lab.components import call_factory
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.run.store import Artifact


@dataclass
class TrainedPolicy:
    """The result of policy optimisation.

    :param handle: the policy handle to evaluate (None on ranks other than 0).
    :param device: where it is.
    :param artifact: the cached trained policy, or None for a policy that trains nothing (best-of-n).
    """

    handle: Any
    device: Any
    artifact: Optional[Artifact] = None


def key(run, start: Artifact, reward_model: Optional[Artifact], preferences: Optional[Artifact], round_: int) -> str:
    """The key of the policy trained from ``start`` in round ``round_``."""
    plan = run.plan
    config = {
        "algo": plan.section("algo"), "plugin": plan.distribution("algo"), "reward": plan.section("reward") if "reward" in plan.consumes else None,
        "round": round_, "prompts": hashlib.sha256(json.dumps(run.task.train_prompts).encode()).hexdigest(), **run.key_fields(),
    }
    upstream = [start.key] + ([reward_model.key] if reward_model is not None else [])
    upstream += [preferences.key] if "preferences" in plan.consumes and preferences is not None else []
    return artifact_key("policy", config, upstream)


def optimise(run, start: Artifact, reference, reward=None, reward_model: Optional[Artifact] = None,
             preferences: Optional[Artifact] = None, round_: int = 1) -> TrainedPolicy:
    """The policy of round ``round_`` optimised from ``start`` against ``reference``, with the reward
    function and/or preference records the algorithm consumes.

    :param reference: the :class:`~rlhf_lab.run.builders.reference.Reference`.
    :param reward_model: the reward model behind ``reward`` (part of the cache key), if learned.
    """
    from lightning.pytorch import seed_everything

    from rlhf_lab.algos.inputs import AlgoInputs
    from rlhf_lab.training import checkpoint_dir

    plan, stage = run.plan, run.trainer_stage("policy", round_)
    policy_key = key(run, start, reward_model, preferences, round_)
    inputs = AlgoInputs(
        sft=start.path, reference=reference.model, tokenizer=run.tokenizer, prompts=run.task.train_prompts, seed=run.cfg.seed,
        dtype=run.dtype, checkpoint_dir=checkpoint_dir(run.run_dir, stage), policy=reference.trainable, lora=plan.lora,
        gradient_checkpointing=plan.settings["model"].gradient_checkpointing,
        reward=reward if "reward" in plan.consumes else None,
        preferences=preferences.path if "preferences" in plan.consumes else None,
    )
    if not plan.components["algo"].traits["trains_policy"]:
        seed_everything(run.cfg.seed + round_ - 1, verbose=False)
        return TrainedPolicy(_built(run, inputs), run.inference_device())
    trained: dict[str, Any] = {}

    def build(out: Optional[Path]) -> dict:
        seed_everything(run.cfg.seed + round_ - 1, verbose=False)
        trained.update(_train(run, inputs, stage, policy_key, out))
        return {}

    artifact = run.store.cached("policy", policy_key, build, collective=True)
    if not run.ranks.is_main:
        return TrainedPolicy(None, trained.get("device"), artifact)  # rank 0 evaluates
    if "module" in trained:  # trained by this run: evaluate it where the trainer ran
        return TrainedPolicy(trained["module"].policy_handle(), trained["device"], artifact)
    return TrainedPolicy(_reloaded(run, artifact, start), run.inference_device(), artifact)


def _built(run, inputs):
    """The algorithm's result; a trainable module where the algorithm declared none is refused."""
    import lightning.pytorch as pl

    algo = run.plan.components["algo"]
    result = call_factory("algo", algo.name, algo.plugin, algo.factory, run.plan.settings["algo"], inputs)
    trains = isinstance(result, pl.LightningModule)
    if trains != algo.traits["trains_policy"]:
        raise RlhfLabError(
            f"algo '{algo.name}' (plugin {algo.plugin}) declares trains_policy={algo.traits['trains_policy']} "
            f"but its factory returned {'a LightningModule' if trains else type(result).__name__}"
        )
    return result


def _train(run, inputs, stage: str, policy_key: str, out: Optional[Path]) -> dict:
    """Fit the algorithm's module; rank 0 saves the gathered policy into ``out``."""
    from rlhf_lab.run.fitting import fit, gathered

    module = _built(run, inputs)
    trainer = fit(run, module, stage, "policy", policy_key, max_epochs=getattr(module, "max_epochs", 1), max_steps=getattr(module, "max_steps", None))
    device = trainer.strategy.root_device
    policy = gathered(run, module.policy, inputs.load_policy, stage)
    if policy is None:
        return {"device": device}
    module.policy = policy
    policy.save_pretrained(out)
    run.tokenizer.save_pretrained(out)
    # Lightning hands the module back on the CPU after fit; evaluate where the trainer ran.
    policy.to(device)
    return {"module": module, "device": device}


def _reloaded(run, artifact: Artifact, start: Artifact):
    """The handle of a policy this run found in the cache (with LoRA: its adapters on the start policy)."""
    from rlhf_lab.models.loading import load_policy
    from rlhf_lab.policy import ModelPolicy

    device = run.inference_device()
    if run.plan.lora is not None:
        from peft import PeftModel

        base = load_policy(str(start.path), run.dtype, key=f"policy {start.path}")
        model = PeftModel.from_pretrained(base, str(artifact.path))
    else:
        model = load_policy(str(artifact.path), run.dtype, key=f"policy {artifact.path}")
    return ModelPolicy(model.to(device), run.tokenizer)
