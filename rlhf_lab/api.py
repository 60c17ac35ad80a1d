"""The plugin API: everything a plugin imports from rlhf_lab, and nothing else.

A plugin module implements hooks of :mod:`rlhf_lab.hookspecs` with :data:`hookimpl` and registers
components through them; what each kind of component must provide is a Protocol here
(:class:`TaskFactory`, :class:`FeedbackSourceFactory` and :class:`FeedbackSource`,
:class:`RewardComponentFactory` and :class:`RewardComponent`, :class:`AlgorithmFactory`), checked when
the component registers, with one message naming the plugin and the missing member.

Versioned apart from the package (:data:`API_VERSION`, semantic versioning): a minor version adds names
or optional members; a major version removes or changes one. Every other module of rlhf_lab is
internal and may change in any release.

Importing this module imports no torch; :class:`RewardObjective` and :class:`RewardFunction`, which
are torch classes, load on first use.
"""

from __future__ import annotations

from typing import Any

from rlhf_lab import hookimpl
from rlhf_lab.algos.inputs import AlgoInputs
from rlhf_lab.components import (
    CONSUMABLE,
    FEEDBACK_KINDS,
    REWARD_CONSUMABLE,
    AlgorithmFactory,
    FeedbackSource,
    FeedbackSourceFactory,
    RewardComponent,
    RewardComponentFactory,
    TaskFactory,
)
from rlhf_lab.errors import DataError, NonFiniteLossError, RlhfLabError, UnknownComponentError
from rlhf_lab.noise import gaussian_ratings, plackett_luce_ranking
from rlhf_lab.records import PreferenceRecord, read_jsonl, write_jsonl
from rlhf_lab.plugin_manager import lazy_factory
from rlhf_lab.tasks.base import Task

API_VERSION = "1.1"
"""The plugin API's version (semantic versioning, apart from the package's)."""

__all__ = [
    "API_VERSION", "hookimpl", "lazy_factory",
    "RlhfLabError", "DataError", "NonFiniteLossError", "UnknownComponentError",
    "Task", "PreferenceRecord", "read_jsonl", "write_jsonl", "plackett_luce_ranking", "gaussian_ratings",
    "AlgoInputs", "CONSUMABLE", "REWARD_CONSUMABLE", "FEEDBACK_KINDS",
    "TaskFactory", "FeedbackSource", "FeedbackSourceFactory", "RewardComponent", "RewardComponentFactory", "AlgorithmFactory",
    "RewardObjective", "RewardFunction",
]

_LAZY = {
    "RewardObjective": ("rlhf_lab.rewards.base", "RewardObjective"),
    "RewardFunction": ("rlhf_lab.rewards.function", "RewardFunction"),
}


def __getattr__(name: str) -> Any:
    """The torch classes of the API, imported when first used."""
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'rlhf_lab.api' has no attribute '{name}'")
