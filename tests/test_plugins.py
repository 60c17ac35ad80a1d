"""The plugin host: registration, schemas in the ConfigStore, and loud failures."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
from hydra.core.config_store import ConfigStore

from rlhf_lab import hookimpl
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.plugin_manager import BUILTIN_PLUGINS, build_plugin_manager

from conftest import SUBPROCESS_TIMEOUT


@dataclass
class EchoConfig:
    name: str = "echo_test"
    strength: float = 1.0


class EchoPlugin:
    """A third-party-style plugin object registering an algorithm with its own schema."""

    @hookimpl
    def rlhf_lab_register_algorithms(self, register):
        register("echo_test", noop_algorithm, EchoConfig)


def noop_algorithm(cfg, inputs):
    """An algorithm factory that builds nothing; it declares what it consumes like a real one."""


noop_algorithm.consumes = ("reward",)


def test_builtins_register_every_default_component():
    registry = build_plugin_manager(load_entry_points=False).registry
    names = {(c.kind, c.name) for c in registry.all()}
    assert {("task", "toy"), ("feedback", "simulated"), ("feedback", "dataset"), ("reward", "pairwise"), ("reward", "pointwise"), ("algo", "ppo")} <= names
    assert {c.plugin for c in registry.all()} <= set(BUILTIN_PLUGINS)


def test_plugin_schema_becomes_a_config_option_without_yaml():
    pm = build_plugin_manager(load_entry_points=False, extra_plugins=(EchoPlugin(),))
    component = pm.registry.get("algo", "echo_test")
    assert component.schema is EchoConfig
    repo = ConfigStore.instance().repo
    assert "echo_test.yaml" in repo["algo"] and "echo_test.yaml" in repo["schema"]["algo"]
    # Built-ins ship a YAML, so only the schema copy is stored for them.
    assert "ppo.yaml" not in repo.get("algo", {}) and "ppo.yaml" in repo["schema"]["algo"]


def test_duplicate_component_names_both_plugins():
    class Clash:
        @hookimpl
        def rlhf_lab_register_algorithms(self, register):
            from rlhf_lab.algos.ppo_config import PPOConfig

            register("ppo", noop_algorithm, PPOConfig)

    clash = Clash()
    with pytest.raises(RlhfLabError, match=r"algo 'ppo' is registered twice: by (\d+) .* and by rlhf_lab.algos \(rlhf_lab \(built-in\)\)") as info:
        build_plugin_manager(load_entry_points=False, extra_plugins=(clash,))
    assert info.match(str(id(clash)))  # each registration is credited to the plugin that made it


def test_misspelled_hook_fails_loudly():
    class Typo:
        @hookimpl
        def rlhf_lab_register_algorithm(self, register):  # missing "s"
            pass

    with pytest.raises(RlhfLabError, match="unknown hook"):
        build_plugin_manager(load_entry_points=False, extra_plugins=(Typo(),))


def test_schema_without_matching_name_field_is_rejected():
    @dataclass
    class Nameless:
        lr: float = 1.0

    class Bad:
        @hookimpl
        def rlhf_lab_register_algorithms(self, register):
            register("nameless_test", noop_algorithm, Nameless)

    with pytest.raises(RlhfLabError, match='needs a field `name: str = "nameless_test"`'):
        build_plugin_manager(load_entry_points=False, extra_plugins=(Bad(),))


def test_broken_entry_point_is_named_and_exits_2(tmp_path):
    """A distribution whose plugin module fails to import: one message naming plugin and distribution."""
    dist = tmp_path / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlhf_lab]\nbroken = broken_plugin_mod\n")
    (tmp_path / "broken_plugin_mod.py").write_text("raise ImportError('needs a library that is not installed')\n")
    env = {k: v for k, v in os.environ.items() if k != "RLHF_LAB_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "rlhf_lab", "plugins"], env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 2
    assert "plugin 'broken' (broken-plugin 0.1, entry point broken_plugin_mod) failed to load" in result.stderr
    assert "RLHF_LAB_DISABLE_PLUGIN_AUTOLOAD=1" in result.stderr
    hermetic = subprocess.run([sys.executable, "-m", "rlhf_lab", "plugins"], env={**env, "RLHF_LAB_DISABLE_PLUGIN_AUTOLOAD": "1"}, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert hermetic.returncode == 0 and "broken" not in hermetic.stdout


def test_plugin_listing_names_components_and_distribution():
    result = subprocess.run([sys.executable, "-m", "rlhf_lab", "plugins"], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 0, result.stderr
    for expected in ("rlhf_lab.algos", "ppo", "pairwise", "pointwise", "simulated", "toy", "rlhf_lab (built-in)", "PPOConfig"):
        assert expected in result.stdout
    # Listing plugins must not import torch (factories import lazily).
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from rlhf_lab.plugin_manager import get_plugin_manager; get_plugin_manager(); print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
    )
    assert probe.stdout.strip() == "False", probe.stderr


def test_an_algorithm_that_does_not_say_what_it_consumes_is_rejected():
    from rlhf_lab import hookimpl
    from rlhf_lab.plugin_manager import build_plugin_manager

    @dataclass
    class VagueConfig:
        name: str = "vague_test"

    class Vague:
        @hookimpl
        def rlhf_lab_register_algorithms(self, register):
            register("vague_test", lambda cfg, inputs: None, VagueConfig)

    with pytest.raises(RlhfLabError, match=r"algo 'vague_test' \(plugin \d+\): its factory has no `consumes`"):
        build_plugin_manager(load_entry_points=False, extra_plugins=(Vague(),))


@dataclass
class ProbeFeedbackConfig:
    name: str = "probe_test"


class CompleteSource:
    needs_candidates = True
    responses_per_prompt = 2

    def __init__(self, cfg, task):
        self.cfg = cfg

    def collect(self, prompts, candidates, *, kind, seed, split):
        return []


class NoCollect:
    needs_candidates = False

    def __init__(self, cfg, task):
        pass


class NoTrait:
    def __init__(self, cfg, task):
        pass

    def collect(self, prompts, candidates, *, kind, seed, split):
        return []


def _registering(kind_hook: str, factory, schema=ProbeFeedbackConfig):
    """A plugin object registering ``factory`` through the hook ``kind_hook``."""

    class Probe:
        pass

    def hook(self, register):
        register(schema.name, factory, schema)

    setattr(Probe, kind_hook, hookimpl(hook))
    return Probe()


@pytest.mark.parametrize("factory, message", [
    (NoCollect, r"feedback 'probe_test' \(plugin \d+\): it has no method `collect`; see rlhf_lab.api.FeedbackSource"),
    (NoTrait, r"feedback 'probe_test' \(plugin \d+\): its factory has no `needs_candidates` \(true or false\); see rlhf_lab.api.FeedbackSourceFactory"),
    ("not callable", r"feedback 'probe_test' \(plugin \d+\): the registered factory 'not callable' is not callable"),
])
def test_a_component_missing_a_member_is_refused_at_registration_naming_it(factory, message):
    with pytest.raises(RlhfLabError, match=message):
        build_plugin_manager(load_entry_points=False, extra_plugins=(_registering("rlhf_lab_register_feedback_sources", factory),))


def test_traits_are_read_once_with_their_defaults():
    pm = build_plugin_manager(load_entry_points=False, extra_plugins=(_registering("rlhf_lab_register_feedback_sources", CompleteSource),))
    assert dict(pm.registry.get("feedback", "probe_test").traits) == {"needs_candidates": True}
    assert dict(pm.registry.get("algo", "ppo").traits) == {"consumes": ("reward",), "trains_policy": True}
    assert dict(pm.registry.get("algo", "best_of_n").traits) == {"consumes": ("reward",), "trains_policy": False}
    assert dict(pm.registry.get("reward", "pointwise").traits) == {"consumes": ("reward_model",), "feedback_kind": "rating"}
    assert dict(pm.registry.get("reward", "rule").traits) == {"consumes": (), "feedback_kind": None}


def test_a_reward_component_with_an_unknown_input_is_refused():
    @dataclass
    class OddConfig:
        name: str = "odd_test"

    def odd(cfg):
        return None

    odd.consumes = ("preferences",)
    with pytest.raises(RlhfLabError, match=r"reward 'odd_test' .*`consumes` must be a tuple of names from \('reward_model',\), or \(\), got \('preferences',\)"):
        build_plugin_manager(load_entry_points=False, extra_plugins=(_registering("rlhf_lab_register_reward_models", odd, OddConfig),))


def test_a_built_source_is_checked_against_its_protocol():
    from rlhf_lab.components import check_built

    class Built:
        def collect(self, prompts, candidates, *, kind, seed, split):
            return []

    with pytest.raises(RlhfLabError, match=r"feedback 'x' \(plugin p\): a source with needs_candidates=True needs an integer `responses_per_prompt`"):
        check_built("feedback", "x", Built(), "p", needs_candidates=True)
    assert check_built("feedback", "x", Built(), "p", needs_candidates=False) is not None


def test_run_hooks_go_through_pluggys_caller_so_wrappers_wrap(monkeypatch):
    """A hook wrapper sees the other implementations' results; a failing implementation is named."""
    import rlhf_lab.plugin_manager as plugin_manager

    seen = []

    class Plain:
        @hookimpl
        def rlhf_lab_callbacks(self, cfg, stage):
            return ["plain"]

    class Wrapper:
        @hookimpl(wrapper=True)
        def rlhf_lab_callbacks(self, cfg, stage):
            results = yield
            seen.append(list(results))
            return results + [["wrapped"]]

    class Failing:
        @hookimpl
        def rlhf_lab_run_finished(self, cfg, metrics, run_dir):
            raise ValueError("no disk")

    failing = Failing()
    pm = build_plugin_manager(load_entry_points=False, extra_plugins=(Plain(), Wrapper(), failing))
    monkeypatch.setattr(plugin_manager, "_PM", pm)
    assert plugin_manager.call_hook("rlhf_lab_callbacks", cfg=None, stage="sft") == [["plain"], ["wrapped"]]
    assert seen == [[["plain"]]]
    with pytest.raises(RlhfLabError, match=rf"plugin '{id(failing)}' \(rlhf_lab \(built-in\)\) failed in its hook rlhf_lab_run_finished: ValueError: no disk"):
        plugin_manager.call_hook("rlhf_lab_run_finished", cfg=None, metrics={}, run_dir=None)
