"""The SFT policy: the starting model fine-tuned on the task's demonstrations (or the starting model itself)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from rlhf_lab.cache import artifact_key
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.run.store import Artifact, file_digests

log = logging.getLogger(__name__)


def key(run, base: Artifact) -> str:
    """The cache key of the SFT policy fine-tuned from ``base``."""
    plan = run.plan
    config = {
        "sft": plan.section("sft"), "task": plan.section("task"), "plugin": plan.distribution("task"), "data": plan.section("data"),
        "files": file_digests(plan.section("task")), **run.key_fields(),
    }
    return artifact_key("sft", config, [base.key])


def skip(run, base: Artifact) -> Artifact:
    """``sft.enabled=false``: the starting model is the SFT policy and the reference."""
    log.info("sft: skipped (sft.enabled=false); start policy and reference: %s", base.path)
    return base


def build(run, base: Artifact) -> Artifact:
    """The starting model fine-tuned on ``task.sft_train``, validated on ``task.sft_eval`` (cached)."""
    if not run.task.sft_train:
        raise RlhfLabError(
            f"task '{run.plan.settings['task'].name}' has no demonstrations to fine-tune on (no response column); "
            "give one (task.columns.response=<column>) or start from the given model with sft.enabled=false"
        )
    sft_key = key(run, base)
    return run.store.cached("sft", sft_key, lambda out: _train(run, base, sft_key, out), collective=True)


def _train(run, base: Artifact, sft_key: str, out: Optional[Path]) -> dict:
    """Fine-tune and (rank 0) save into ``out``; returns the ``sft/`` figures."""
    from lightning.pytorch import seed_everything

    from rlhf_lab.models.loading import disable_dropout, load_policy
    from rlhf_lab.models.lora import add_policy_adapters, enable_gradient_checkpointing
    from rlhf_lab.run.fitting import figures, fit, gathered
    from rlhf_lab.stages.sft import SFTModule, check_converged, demonstration_loader, tokenize_demonstrations
    from rlhf_lab.training import checkpoint_dir

    seed, settings, lora = run.cfg.seed, run.plan.settings["sft"], run.plan.lora
    seed_everything(seed, verbose=False)
    examples = run.task.sft_train[: settings.max_examples] if settings.max_examples else run.task.sft_train
    pad = run.tokenizer.pad_token_id
    train = demonstration_loader(tokenize_demonstrations(run.tokenizer, examples, run.limits), pad, settings.batch_size, True, seed,
                                 group_by_length=settings.group_by_length)
    val = demonstration_loader(tokenize_demonstrations(run.tokenizer, run.task.sft_eval, run.limits), pad, 128, False, seed)
    policy = load_policy(str(base.path), run.dtype)
    if settings.disable_dropout:
        disable_dropout(policy)
    if lora is not None:
        policy = add_policy_adapters(policy, lora)
    if run.plan.settings["model"].gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    module = SFTModule(policy, settings.lr, settings.weight_decay, checkpoint_dir(run.run_dir, "sft"), train, val)
    trainer = fit(run, module, "sft", "sft", sft_key, max_epochs=settings.epochs, max_steps=settings.max_steps)
    model = gathered(run, module.model, lambda: load_policy(str(base.path), run.dtype), "sft")
    if model is None:
        return {}  # a worker rank: rank 0 checks and saves
    logged = figures(module, trainer, "sft")
    vocab_size = getattr(policy.config, "vocab_size", None)
    if "sft/val_loss" in logged and vocab_size:
        check_converged(logged["sft/val_loss"], vocab_size, settings.lr)
    # With LoRA the SFT policy is saved merged: every later stage loads a plain model.
    (model.merge_and_unload() if lora is not None else model).save_pretrained(out)
    run.tokenizer.save_pretrained(out)
    return logged
