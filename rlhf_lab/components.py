"""What each kind of component must provide, written once: a typing Protocol per kind and the check
that a component gets when it registers.

A component is registered as ``register(name, factory, schema)``. What the run must know before it
builds anything (which artifacts an algorithm consumes, whether a feedback source labels sampled
candidates) is a *trait* of the factory: an attribute of the registered callable, set by
:func:`rlhf_lab.api.lazy_factory` or, for a class, a class attribute. Each trait is read once, at
registration, with its default from :data:`TRAITS`, and kept on the registry's ``Component``; nothing
else reads it from the factory. The object a factory builds is checked against its Protocol when the run
builds it (and, for a class factory, its methods already at registration).

This module imports no torch: listing plugins and composing a config stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from rlhf_lab.errors import RlhfLabError

CONSUMABLE = ("reward", "preferences")
"""What an algorithm may declare in ``consumes``; the SFT policy and the reference come always."""

REWARD_CONSUMABLE = ("reward_model",)
"""What a reward component may declare in ``consumes``: a learned model, or nothing (a rule)."""

FEEDBACK_KINDS = ("ranking", "rating")


# --- the Protocols (what a plugin author implements) ----------------------------------------------


@runtime_checkable
class TaskFactory(Protocol):
    """``factory(cfg, seed) -> Task``: prompts, demonstrations and, where known, a gold utility."""

    def __call__(self, cfg: Any, seed: int) -> Any: ...


@runtime_checkable
class FeedbackSource(Protocol):
    """Turns prompts and candidate responses into preference records.

    Optional members (read with these defaults): ``rounds`` (1: how many times each training prompt is
    labelled), ``stats`` ({}: counts that join the run's metrics, e.g. rows a file skipped).
    ``responses_per_prompt`` is required when the factory's ``needs_candidates`` is true.
    """

    def collect(self, prompts: list[str], candidates: list[list[str]], *, kind: str, seed: int, split: str) -> list:
        """Preference records (:class:`rlhf_lab.api.PreferenceRecord`) for ``split`` (``"train"`` or
        ``"heldout"``) of ``kind`` (``"ranking"`` or ``"rating"``)."""
        ...


@runtime_checkable
class FeedbackSourceFactory(Protocol):
    """``factory(cfg, task) -> FeedbackSource``. Trait ``needs_candidates`` (required): whether the run
    samples candidates from the policy for the source to label (false: it reads records from files)."""

    needs_candidates: bool

    def __call__(self, cfg: Any, task: Any) -> FeedbackSource: ...


@runtime_checkable
class RewardComponent(Protocol):
    """Turns the artifacts it consumes into the run-time reward function. A learned reward model (one
    that consumes ``reward_model``) is also the objective the run trains it with: subclass
    :class:`rlhf_lab.rewards.base.RewardObjective`."""

    def reward_function(self, inputs: dict, tokenizer: Any, dtype: str) -> Any: ...


@runtime_checkable
class RewardComponentFactory(Protocol):
    """``factory(cfg) -> RewardComponent``. Traits: ``consumes`` (required: ``("reward_model",)`` or
    ``()``), ``feedback_kind`` (``"ranking"`` by default, ``"rating"``; None for a rule)."""

    consumes: tuple[str, ...]

    def __call__(self, cfg: Any) -> RewardComponent: ...


@runtime_checkable
class AlgorithmFactory(Protocol):
    """``factory(cfg, inputs: AlgoInputs)`` -> a ``LightningModule`` with ``policy`` and
    ``policy_handle()``, or a policy handle when nothing is trained. Traits: ``consumes`` (required: names
    from :data:`CONSUMABLE`), ``trains_policy`` (true by default; false: ``loop.rounds`` refuses it)."""

    consumes: tuple[str, ...]

    def __call__(self, cfg: Any, inputs: Any) -> Any: ...


# --- traits, read once at registration --------------------------------------------------------------

REQUIRED = object()
"""The default of a trait that has none: a factory without it is refused."""


@dataclass(frozen=True)
class Trait:
    """One attribute of a registered factory: its meaning, its valid values and its default."""

    name: str
    expected: str
    valid: Callable[[Any], bool]
    default: Any = REQUIRED


def _names_from(allowed: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, (tuple, list)) and all(v in allowed for v in value)


TRAITS: dict[str, tuple[Trait, ...]] = {
    "task": (),
    "feedback": (Trait("needs_candidates", "true or false", lambda v: isinstance(v, bool)),),
    "reward": (
        Trait("consumes", f"a tuple of names from {REWARD_CONSUMABLE}, or ()", _names_from(REWARD_CONSUMABLE)),
        Trait("feedback_kind", f"one of {FEEDBACK_KINDS} or None", lambda v: v is None or v in FEEDBACK_KINDS, "ranking"),
    ),
    "algo": (
        Trait("consumes", f"a tuple of names from {CONSUMABLE}", _names_from(CONSUMABLE)),
        Trait("trains_policy", "true or false", lambda v: isinstance(v, bool), True),
    ),
}

PROTOCOLS = {"task": TaskFactory, "feedback": FeedbackSourceFactory, "reward": RewardComponentFactory, "algo": AlgorithmFactory}
"""The Protocol of each kind's registered factory."""

BUILT = {"feedback": FeedbackSource, "reward": RewardComponent}
"""The Protocol of the object a factory builds, where the run calls members of it."""


def read_traits(kind: str, name: str, factory: Any, plugin: str) -> dict[str, Any]:
    """The traits of ``factory`` with their defaults, or one error naming the plugin and the member."""
    where = f"{kind} '{name}' (plugin {plugin})"
    protocol = PROTOCOLS[kind].__name__
    if not callable(factory):
        raise RlhfLabError(f"{where}: the registered factory {factory!r} is not callable; see rlhf_lab.api.{protocol}")
    traits = {}
    for trait in TRAITS[kind]:
        value = getattr(factory, trait.name, trait.default)
        if value is REQUIRED:
            raise RlhfLabError(f"{where}: its factory has no `{trait.name}` ({trait.expected}); see rlhf_lab.api.{protocol}")
        if not trait.valid(value):
            raise RlhfLabError(f"{where}: its factory's `{trait.name}` must be {trait.expected}, got {value!r}; see rlhf_lab.api.{protocol}")
        traits[trait.name] = tuple(value) if isinstance(value, list) else value
    if isinstance(factory, type) and kind in BUILT:
        _check_members(BUILT[kind], factory, where)
    return traits


def _members(protocol: type) -> list[str]:
    return [m for m in vars(protocol) if not m.startswith("_") and callable(getattr(protocol, m))]


def _check_members(protocol: type, obj: Any, where: str) -> None:
    for member in _members(protocol):
        if not callable(getattr(obj, member, None)):
            raise RlhfLabError(f"{where}: it has no method `{member}`; see rlhf_lab.api.{protocol.__name__}")


def check_built(kind: str, name: str, obj: Any, plugin: str, needs_candidates: Optional[bool] = None) -> Any:
    """``obj``, the object a ``kind`` factory built, checked against its Protocol (one message naming the
    plugin and the missing member)."""
    where = f"{kind} '{name}' (plugin {plugin})"
    if kind in BUILT:
        _check_members(BUILT[kind], obj, where)
    if kind == "feedback" and needs_candidates and not isinstance(getattr(obj, "responses_per_prompt", None), int):
        raise RlhfLabError(f"{where}: a source with needs_candidates=True needs an integer `responses_per_prompt`; see rlhf_lab.api.FeedbackSource")
    return obj


FEEDBACK_DEFAULTS = {"rounds": 1, "stats": {}}
"""The optional members of a :class:`FeedbackSource`, and what the run reads when one is absent."""


def feedback_member(source: Any, member: str) -> Any:
    """An optional member of a feedback source, with its default from :data:`FEEDBACK_DEFAULTS`."""
    return getattr(source, member, FEEDBACK_DEFAULTS[member])


def call_factory(kind: str, name: str, plugin: str, factory: Callable[..., Any], *args: Any) -> Any:
    """``factory(*args)``; a factory that raises stops the run with one message naming the component and
    its plugin (an :class:`RlhfLabError` passes as it is; a full disk or a memory error is left for
    :func:`rlhf_lab.errors.resource_failure`)."""
    try:
        return factory(*args)
    except (RlhfLabError, OSError, MemoryError):
        raise
    except Exception as exc:
        raise RlhfLabError(f"{kind} '{name}' (plugin {plugin}): its factory failed: {type(exc).__name__}: {exc}") from exc
