"""The starting model: ``model.name_or_path``, or the model the task builds (cached)."""

from __future__ import annotations

from pathlib import Path

from rlhf_lab.cache import artifact_key
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.run.store import Artifact, Store


def starting_model(plan, task, store: Store) -> Artifact:
    """The directory of the starting model and its tokenizer.

    A given model's key is ``model:<fingerprint>`` (a local directory's absolute path plus its files'
    names, sizes and modification times; a hub name as given); a task's model is keyed by the task's config.
    """
    name_or_path = plan.settings["model"].name_or_path
    if name_or_path:
        from rlhf_lab.models.loading import model_fingerprint

        return Artifact(Path(name_or_path), f"model:{model_fingerprint(name_or_path)}")
    if task.build_base_model is None:
        raise RlhfLabError(f"model.name_or_path is required: task '{plan.settings['task'].name}' ships no model")
    key = artifact_key("base", {"task": plan.section("task"), "plugin": plan.distribution("task"), "seed": plan.cfg.seed}, [])

    def build(out: Path) -> dict:
        task.build_base_model(out)
        return {}

    return store.cached("base", key, build)
