"""Builds the plugin manager and the registry of components the plugins provide."""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from importlib import resources
import sys
from typing import Any, Callable, Mapping

import pluggy

from rlhf_lab import hookspecs
from rlhf_lab.errors import RlhfLabError, UnknownComponentError

BUILTIN_PLUGINS = (
    "rlhf_lab.tasks.toy",
    "rlhf_lab.tasks.dataset",
    "rlhf_lab.feedback.simulated",
    "rlhf_lab.feedback.dataset",
    "rlhf_lab.feedback.human",
    "rlhf_lab.feedback.ai_judge",
    "rlhf_lab.rewards",
    "rlhf_lab.algos",
)
"""Built-in plugins, registered through the same hooks as third-party ones."""

DISABLE_AUTOLOAD_ENV = "RLHF_LAB_DISABLE_PLUGIN_AUTOLOAD"
"""Set to 1 to skip entry-point plugins (hermetic tests); built-ins still load."""

ENTRY_POINT_GROUP = "rlhf_lab"

# Component kind -> (registration hook, Hydra config group).
KINDS = {
    "task": "rlhf_lab_register_tasks",
    "feedback": "rlhf_lab_register_feedback_sources",
    "reward": "rlhf_lab_register_reward_models",
    "algo": "rlhf_lab_register_algorithms",
}


def lazy_factory(target: str, **attributes: Any) -> Callable[..., Any]:
    """A factory that imports ``"module:attribute"`` on its first call, keeping plugin import light.

    ``attributes`` are the factory's traits, set on the returned factory (e.g. an algorithm's
    ``consumes=("reward",)``, :data:`rlhf_lab.components.TRAITS`), so the run reads them without
    importing the target.
    """
    module_name, attribute = target.split(":")

    def factory(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module_name), attribute)(*args, **kwargs)

    factory.__qualname__ = factory.__name__ = f"lazy({target})"
    for key, value in attributes.items():
        setattr(factory, key, value)
    return factory


@dataclass(frozen=True)
class Component:
    """One registered component: its factory, config schema, the plugin that provided it, and the
    factory's traits (:data:`rlhf_lab.components.TRAITS`), read once when it registered."""

    kind: str
    name: str
    factory: Callable[..., Any]
    schema: type
    plugin: str
    distribution: str
    traits: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    """Components by kind and name, filled by the registration hooks."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}

    def add(self, component: Component) -> None:
        existing = self._components[component.kind].get(component.name)
        if existing is not None:
            raise RlhfLabError(
                f"{component.kind} '{component.name}' is registered twice: by {existing.plugin} "
                f"({existing.distribution}) and by {component.plugin} ({component.distribution})"
            )
        self._components[component.kind][component.name] = component

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``; an unknown name lists those that exist."""
        try:
            return self._components[kind][name]
        except KeyError:
            known = "\n".join(f"  {c.name}  (plugin {c.plugin}, from {c.distribution})" for c in self.list(kind))
            raise UnknownComponentError(f"unknown {kind} '{name}' (config key '{kind}.name'). Available:\n{known}") from None

    def list(self, kind: str) -> list[Component]:
        return sorted(self._components[kind].values(), key=lambda c: c.name)

    def all(self) -> list[Component]:
        return [c for kind in KINDS for c in self.list(kind)]


def _distribution_names(pm: pluggy.PluginManager) -> dict[int, str]:
    return {id(plugin): f"{dist.project_name} {dist.version}" for plugin, dist in pm.list_plugin_distinfo()}


def _ships_yaml(group: str, name: str) -> bool:
    """Whether conf/<group>/<name>.yaml exists: that file then extends the schema instead of replacing it."""
    return resources.files("rlhf_lab.conf").joinpath(group, f"{name}.yaml").is_file()


def _store_schema(group: str, name: str, schema: type) -> None:
    from hydra.core.config_store import ConfigStore

    if not dataclasses.is_dataclass(schema):
        raise RlhfLabError(f"{group} '{name}': schema must be a dataclass, got {schema!r}")
    names = {f.name: f for f in dataclasses.fields(schema)}
    if "name" not in names or names["name"].default != name:
        raise RlhfLabError(f"{group} '{name}': schema {schema.__name__} needs a field `name: str = \"{name}\"`")
    store = ConfigStore.instance()
    # schema/<group>/<name> is what a YAML in conf/<group>/ extends; a plugin without YAML gets the
    # schema itself as the selectable option <group>=<name>.
    store.store(group=f"schema/{group}", name=name, node=schema)
    if not _ships_yaml(group, name):
        store.store(group=group, name=name, node=schema)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register every entry point in group ``rlhf_lab``; a plugin that fails to import is named."""
    from importlib.metadata import entry_points

    # Import each one first to name the culprit; pluggy's loader then registers them (from the
    # import cache) and records their distributions for list_plugin_distinfo().
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            raise RlhfLabError(
                f"plugin '{ep.name}' ({dist}, entry point {ep.value}) failed to load: {type(exc).__name__}: {exc}. "
                f"Set {DISABLE_AUTOLOAD_ENV}=1 to run without entry-point plugins."
            ) from exc
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)


def build_plugin_manager(load_entry_points: bool | None = None, extra_plugins: tuple = ()) -> pluggy.PluginManager:
    """Add the hookspecs, register the built-ins, load entry points, check, then fill the registry.

    :param load_entry_points: load plugins from entry points in group ``rlhf_lab``; None: unless
        ``RLHF_LAB_DISABLE_PLUGIN_AUTOLOAD`` is set.
    :param extra_plugins: plugin objects to register after the built-ins (programmatic use, tests).
    :returns: the manager, with the filled :class:`Registry` attached as ``pm.registry``.
    """
    pm = pluggy.PluginManager("rlhf_lab")
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    for plugin in extra_plugins:
        pm.register(plugin)
    if load_entry_points is None:
        load_entry_points = os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")
    if load_entry_points:
        _load_entry_points(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise RlhfLabError(f"plugin '{pm.get_name(exc.plugin)}' implements an unknown hook: {exc}") from None

    pm.registry = _fill_registry(pm)
    return pm


def _impl_running(impls: list, frame) -> Any:
    """The hook implementation among ``impls`` whose function is running in ``frame`` or a frame
    around it (the innermost one), else None: which plugin called ``register`` or raised."""
    codes = {impl.function.__code__: impl for impl in impls if hasattr(impl.function, "__code__")}
    while frame is not None:
        if frame.f_code in codes:
            return codes[frame.f_code]
        frame = frame.f_back
    return None


def _plugin_label(pm: pluggy.PluginManager, impl, dists: dict[int, str]) -> tuple[str, str]:
    """(plugin name, distribution) of a hook implementation."""
    if impl is None:
        return "unknown plugin", "unknown distribution"
    return pm.get_name(impl.plugin) or repr(impl.plugin), dists.get(id(impl.plugin), "rlhf_lab (built-in)")


def _fill_registry(pm: pluggy.PluginManager) -> Registry:
    """Call each registration hook through pluggy's hook caller with one ``register`` callable, which
    finds the plugin calling it from the stack (so hook wrappers run as wrappers); each component's
    traits are checked and read here, once."""
    from rlhf_lab.components import read_traits

    dists = _distribution_names(pm)
    registry = Registry()
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        impls = hook.get_hookimpls()

        def register(name: str, factory: Callable[..., Any], schema: type, _kind=kind, _impls=impls) -> None:
            plugin, dist = _plugin_label(pm, _impl_running(_impls, sys._getframe(1)), dists)
            traits = read_traits(_kind, name, factory, plugin)
            _store_schema(_kind, name, schema)
            registry.add(Component(_kind, name, factory, schema, plugin, dist, traits))

        try:
            hook(register=register)
        except RlhfLabError:
            raise
        except Exception as exc:
            plugin, dist = _plugin_label(pm, _impl_running(impls, _innermost_frame(exc)), dists)
            raise RlhfLabError(f"plugin '{plugin}' ({dist}) failed in its hook {hook_name}: {type(exc).__name__}: {exc}") from exc
    return registry


def _innermost_frame(exc: BaseException):
    """The frame where ``exc`` was raised."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame if tb is not None else None


def call_hook(name: str, **kwargs: Any) -> list:
    """Call the run-phase hook ``name`` through pluggy's hook caller (wrappers wrap; the results of
    plugins that return something, last registered first); an implementation that raises stops the run
    with one message naming its plugin."""
    pm = get_plugin_manager()
    hook = getattr(pm.hook, name)
    try:
        return hook(**kwargs)
    except RlhfLabError:
        raise
    except Exception as exc:
        plugin, dist = _plugin_label(pm, _impl_running(hook.get_hookimpls(), _innermost_frame(exc)), _distribution_names(pm))
        raise RlhfLabError(f"plugin '{plugin}' ({dist}) failed in its hook {name}: {type(exc).__name__}: {exc}") from exc


def hook_items(name: str, expected: type, label: str, **kwargs: Any) -> list:
    """The items of the lists the run-phase hook ``name`` returns (``rlhf_lab_callbacks``,
    ``rlhf_lab_loggers``), each checked to be an ``expected``; anything else stops the run with one
    message naming the hook, what came back and the plugins that implement the hook (pluggy does not
    say which implementation returned which result)."""
    items = []
    for result in call_hook(name, **kwargs):
        for item in (result if isinstance(result, (list, tuple)) else [result]):
            if not isinstance(item, expected):
                pm = get_plugin_manager()
                dists = _distribution_names(pm)
                by = ", ".join(f"{p} ({d})" for p, d in (_plugin_label(pm, i, dists) for i in getattr(pm.hook, name).get_hookimpls()))
                raise RlhfLabError(f"hook {name}({', '.join(f'{k}=...' for k in kwargs)}) returned {item!r} ({type(item).__name__}), "
                                   f"not a list of {label}; implemented by: {by}")
            items.append(item)
    return items


_PM: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _PM
    if _PM is None:
        _PM = build_plugin_manager()
    return _PM
