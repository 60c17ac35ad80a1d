"""Builds the plugin manager and the registry of components the plugins provide."""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

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

    ``attributes`` are set on the returned factory (e.g. an algorithm's ``consumes=("reward",)``), so
    the pipeline can read them without importing the target.
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
    """One registered component: its factory, config schema and the plugin that provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    schema: type
    plugin: str
    distribution: str


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


def _check_consumes(name: str, factory: Callable[..., Any], plugin: str) -> None:
    """An algorithm factory must say what it consumes, in names the pipeline knows how to build."""
    from rlhf_lab.algos.inputs import CONSUMABLE

    consumes = getattr(factory, "consumes", None)
    if not isinstance(consumes, (tuple, list)) or any(c not in CONSUMABLE for c in consumes):
        raise RlhfLabError(
            f"algo '{name}' (plugin {plugin}): its factory needs an attribute `consumes`, a tuple of names from "
            f"{CONSUMABLE}; got {consumes!r}"
        )


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

    dists = _distribution_names(pm)
    registry = Registry()
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
            dist = dists.get(id(impl.plugin), "rlhf_lab (built-in)")

            def register(name: str, factory: Callable[..., Any], schema: type, _kind=kind, _plugin=plugin_name, _dist=dist) -> None:
                if _kind == "algo":
                    _check_consumes(name, factory, _plugin)
                _store_schema(_kind, name, schema)
                registry.add(Component(_kind, name, factory, schema, _plugin, _dist))

            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except RlhfLabError:
                raise
            except Exception as exc:
                raise RlhfLabError(f"plugin '{plugin_name}' ({dist}) failed in its hook {hook_name}: {type(exc).__name__}: {exc}") from exc
    pm.registry = registry
    return pm


def call_hook(name: str, **kwargs: Any) -> list:
    """Call the run-phase hook ``name`` like pluggy does (last registered first, None results dropped),
    but an implementation that raises stops the run with one message naming its plugin."""
    pm = get_plugin_manager()
    dists = _distribution_names(pm)
    results = []
    for impl in reversed(getattr(pm.hook, name).get_hookimpls()):
        try:
            result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
        except RlhfLabError:
            raise
        except Exception as exc:
            plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
            dist = dists.get(id(impl.plugin), "rlhf_lab (built-in)")
            raise RlhfLabError(f"plugin '{plugin}' ({dist}) failed in its hook {name}: {type(exc).__name__}: {exc}") from exc
        if result is not None:
            results.append(result)
    return results


_PM: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _PM
    if _PM is None:
        _PM = build_plugin_manager()
    return _PM
