"""The reward model: a value model trained on the preference records with the reward component as its
objective, its normaliser fitted on the training responses (or the trained model ``reward.path`` names);
with ``reward.ensemble_size`` K > 1, K such members, each cached on its own, and the ensemble that lists them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from rlhf_lab.cache import artifact_key
from rlhf_lab.run.store import Artifact


# Settings that choose how members are combined, not how one is trained: a member's key leaves them out.
ENSEMBLE_FIELDS = ("ensemble_size", "ensemble_objective", "ensemble_coef")


def given(run) -> Artifact:
    """The reward model (or ensemble) ``reward.path`` names (trained elsewhere)."""
    from rlhf_lab.models.loading import model_fingerprint

    path, members = given_members(run.plan.settings["reward"])
    return Artifact(Path(path), "model:" + "+".join(model_fingerprint(str(m)) for m in members))


def given_members(settings) -> tuple[str, list[Path]]:
    """``reward.path`` and the model directories it holds (its members for an ensemble), checked
    against ``reward.ensemble_size``; reads no weights, so the pre-flight calls it before any work."""
    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.models.loading import resolve_model_path
    from rlhf_lab.rewards.ensemble_files import member_dirs

    path = resolve_model_path(settings.path, "reward.path")
    try:
        members = member_dirs(path)
    except (OSError, ValueError) as exc:
        raise RlhfLabError(f"reward.path: {exc}") from None
    size = getattr(settings, "ensemble_size", 1)
    if size > 1 and len(members) != size:
        raise RlhfLabError(f"reward.ensemble_size={size}, but reward.path={settings.path} holds {len(members)} "
                           "reward model(s); leave reward.ensemble_size out to use what it holds")
    return path, members


def train_from_sft(run, preferences: Artifact, sft: Artifact) -> Artifact:
    """Trained from the SFT policy's weights (``reward.init_from_sft=true``, the default)."""
    return train(run, preferences, sft)


def train_from_base(run, preferences: Artifact, base: Artifact) -> Artifact:
    """Trained from the starting model's weights (``reward.init_from_sft=false``)."""
    return train(run, preferences, base)


def train(run, preferences: Artifact, init: Artifact, round_: int = 1) -> Artifact:
    """The reward model of round ``round_`` trained on ``preferences`` from ``init`` (cached); with
    ``reward.ensemble_size`` K > 1, the ensemble of K members (members 1.. with seeds seed + k)."""
    size = getattr(run.plan.settings["reward"], "ensemble_size", 1)  # a plugin's schema may not have it
    members = [_member(run, preferences, init, round_, k) for k in range(size)]
    if size == 1:
        return members[0]
    key = artifact_key("reward_ensemble", {"members": size}, [m.key for m in members])
    return run.store.cached("reward_ensemble", key, lambda out: _ensemble(members, out))


def _member(run, preferences: Artifact, init: Artifact, round_: int, k: int) -> Artifact:
    """Member ``k`` of the ensemble (member 0 is the single reward model ``ensemble_size=1`` trains)."""
    section = {name: value for name, value in run.plan.section("reward").items() if name not in ENSEMBLE_FIELDS}
    config = {"reward": section, "plugin": run.plan.distribution("reward"), **run.key_fields(), **({"member": k} if k else {})}
    key = artifact_key("reward_model", config, [preferences.key, init.key])
    stage = run.trainer_stage("reward_model", round_) + (f"_member{k}" if k else "")
    return run.store.cached("reward_model", key, lambda out: _train(run, preferences, init, key, stage, out, run.cfg.seed + k),
                            collective=True)


def _ensemble(members: list[Artifact], out: Optional[Path]) -> dict:
    """List ``members`` in ``out``; the figures are the members' means, and each member's accuracy."""
    from rlhf_lab.rewards.ensemble_files import write_members

    write_members(out, [m.path for m in members])
    names = sorted(set.intersection(*(set(m.metrics) for m in members)))
    figures = {name: sum(m.metrics[name] for m in members) / len(members) for name in names}
    for k, member in enumerate(members):
        if "reward/accuracy" in member.metrics:
            figures[f"reward/member{k}_accuracy"] = member.metrics["reward/accuracy"]
    return {**figures, "reward/ensemble_size": len(members)}


def _train(run, preferences: Artifact, init: Artifact, key: str, stage: str, out: Optional[Path], seed: int) -> dict:
    """Train, then (rank 0) fit the normaliser and save into ``out``; returns the ``reward/`` figures."""
    from rlhf_lab.records import read_jsonl
    from rlhf_lab.models.lora import merge_value_adapters
    from rlhf_lab.models.value_model import RewardNormaliser
    from rlhf_lab.run.fitting import figures
    from rlhf_lab.stages.reward import score_records

    tokenizer = run.tokenizer
    train_records = read_jsonl(preferences.path / "train.jsonl")
    model, module, trainer = fit_member(run, train_records, read_jsonl(preferences.path / "heldout.jsonl"), init, key, stage, seed)
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


def fit_member(run, train_records: list, heldout_records: list, init: Artifact, key: str, stage: str, seed: int):
    """One reward model fitted from ``init`` on ``train_records`` with the run's reward settings and the
    data order of ``seed`` (resumable as the build ``key``): (the model whole on rank 0, or None on the
    other ranks; the module; the trainer)."""
    from lightning.pytorch import seed_everything

    from rlhf_lab.models.loading import disable_dropout, load_value_model
    from rlhf_lab.models.lora import add_value_adapters
    from rlhf_lab.run.fitting import fit, gathered
    from rlhf_lab.stages.reward import RewardModule, TrainOnlyRewardModule, record_loader, shares_prompt
    from rlhf_lab.training import checkpoint_dir

    settings, objective, tokenizer = run.plan.settings["reward"], run.reward, run.tokenizer
    seed_everything(seed, verbose=False)
    model = load_value_model(str(init.path), run.dtype)
    if settings.disable_dropout:
        disable_dropout(model)
    if run.plan.lora is not None:
        add_value_adapters(model, run.plan.lora)
    share = shares_prompt(objective, model)
    loader = record_loader(train_records, objective, tokenizer, settings.batch_size, True, seed, share)
    if heldout_records:
        module = RewardModule(model, objective, settings.lr, settings.weight_decay, checkpoint_dir(run.run_dir, stage), loader,
                              record_loader(heldout_records, objective, tokenizer, 64, False, seed, share))
    else:
        module = TrainOnlyRewardModule(model, objective, settings.lr, settings.weight_decay, checkpoint_dir(run.run_dir, stage), loader)
    trainer = fit(run, module, stage, "reward_model", key, max_epochs=settings.epochs, max_steps=settings.max_steps)
    return gathered(run, model, lambda: load_value_model(str(init.path), run.dtype), stage), module, trainer
