"""The reward model: a value model trained on the preference records with the reward component as its
objective, its normaliser fitted on the training responses (or the trained model ``reward.path`` names)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rlhf_lab.cache import artifact_key
from rlhf_lab.run.store import Artifact


def given(run) -> Artifact:
    """The reward model ``reward.path`` names (trained elsewhere)."""
    from rlhf_lab.models.loading import model_fingerprint, resolve_model_path

    path = resolve_model_path(run.plan.settings["reward"].path, "reward.path")
    return Artifact(Path(path), f"model:{model_fingerprint(path)}")


def train_from_sft(run, preferences: Artifact, sft: Artifact) -> Artifact:
    """Trained from the SFT policy's weights (``reward.init_from_sft=true``, the default)."""
    return train(run, preferences, sft)


def train_from_base(run, preferences: Artifact, base: Artifact) -> Artifact:
    """Trained from the starting model's weights (``reward.init_from_sft=false``)."""
    return train(run, preferences, base)


def train(run, preferences: Artifact, init: Artifact, round_: int = 1) -> Artifact:
    """The reward model of round ``round_`` trained on ``preferences`` from ``init`` (cached)."""
    config = {"reward": run.plan.section("reward"), "plugin": run.plan.distribution("reward"), **run.key_fields()}
    key = artifact_key("reward_model", config, [preferences.key, init.key])
    stage = run.trainer_stage("reward_model", round_)
    return run.store.cached("reward_model", key, lambda out: _train(run, preferences, init, key, stage, out), collective=True)


def _train(run, preferences: Artifact, init: Artifact, key: str, stage: str, out: Optional[Path]) -> dict:
    """Train, then (rank 0) fit the normaliser and save into ``out``; returns the ``reward/`` figures."""
    from lightning.pytorch import seed_everything

    from rlhf_lab.records import read_jsonl
    from rlhf_lab.models.loading import disable_dropout, load_value_model
    from rlhf_lab.models.lora import add_value_adapters, merge_value_adapters
    from rlhf_lab.models.value_model import RewardNormaliser
    from rlhf_lab.run.fitting import figures, fit, gathered
    from rlhf_lab.stages.reward import RewardModule, record_loader, score_records, shares_prompt
    from rlhf_lab.training import checkpoint_dir

    seed, settings, objective, tokenizer = run.cfg.seed, run.plan.settings["reward"], run.reward, run.tokenizer
    seed_everything(seed, verbose=False)
    train_records, heldout = read_jsonl(preferences.path / "train.jsonl"), read_jsonl(preferences.path / "heldout.jsonl")
    model = load_value_model(str(init.path), run.dtype)
    if settings.disable_dropout:
        disable_dropout(model)
    if run.plan.lora is not None:
        add_value_adapters(model, run.plan.lora)
    share = shares_prompt(objective, model)
    module = RewardModule(
        model, objective, settings.lr, settings.weight_decay, checkpoint_dir(run.run_dir, stage),
        record_loader(train_records, objective, tokenizer, settings.batch_size, True, seed, share),
        record_loader(heldout, objective, tokenizer, 64, False, seed, share),
    )
    trainer = fit(run, module, stage, "reward_model", key, max_epochs=settings.epochs, max_steps=settings.max_steps)
    model = gathered(run, model, lambda: load_value_model(str(init.path), run.dtype), stage)
    if model is None:
        return {}  # a worker rank: rank 0 checks, normalises and saves
    # Normalise on the SFT policy's samples: the training candidates are exactly those.
    normaliser = RewardNormaliser.fit(score_records(model.to(run.inference_device()), tokenizer, train_records))
    if run.plan.lora is not None:
        merge_value_adapters(model)  # saved as a plain model
    # Plain transformers pools at the last non-pad token: it needs the pad id in the config.
    model.model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    normaliser.save(out)
    return {**figures(module, trainer, "reward"), "reward/normaliser_mean": normaliser.mean, "reward/normaliser_std": normaliser.std}
