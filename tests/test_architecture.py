"""The house rules as tests: import contracts (import-linter, pyproject.toml), what imports torch, the
plugin API as the only door into rlhf_lab for plugins, and the size of modules and functions."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlhf_lab"

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the contracts of pyproject.toml, over the package under ``root``."""
    if root != ROOT:
        shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    code = "import sys; from importlinter.cli import lint_imports_command; sys.argv = ['lint-imports', '--no-cache']; lint_imports_command()"
    env = {"PYTHONPATH": str(root), "PATH": ""}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "6 kept, 0 broken" in result.stdout


PLANTED = [
    # (file, line appended, contract that breaks)
    ("algos/ppo.py", "def _planted():\n    from rlhf_lab.run import store\n", "never import the run package or the rank code"),
    ("ops/kl.py", "import transformers\n", "imports torch only"),
    ("training.py", "def _planted():\n    import rlhf_lab.run.experiment\n", "Only the command line and the ranks' entry point import the experiment"),
    ("errors.py", "def _planted():\n    import rlhf_lab.cache\n", "No import cycle"),
    ("components.py", "def _planted():\n    from rlhf_lab.distributed import Ranks\n", "never reach the experiment or the rank code"),
]


@pytest.mark.parametrize("target, planted, contract", PLANTED, ids=[p[0] for p in PLANTED])
def test_a_planted_violation_breaks_its_contract(tmp_path, target, planted, contract):
    shutil.copytree(PACKAGE, tmp_path / "rlhf_lab", ignore=shutil.ignore_patterns("__pycache__", "conf"))
    with open(tmp_path / "rlhf_lab" / target, "a") as out:
        out.write("\n\n" + planted)
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout[-3000:]
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in " ".join(broken.split()), result.stdout[-3000:]


def test_the_plugin_api_and_the_plan_import_no_torch(tmp_path):
    """The plugin listing, ``--help`` and every refusal the config decides come before any torch import."""
    code = f"""
import sys
import rlhf_lab.api
from hydra import compose, initialize_config_module
from rlhf_lab.config import register_engine_schemas
from rlhf_lab.plugin_manager import get_plugin_manager
from rlhf_lab.run.plan import make_plan

registry = get_plugin_manager().registry
register_engine_schemas()
with initialize_config_module(config_module="rlhf_lab.conf", version_base="1.3"):
    cfg = compose(config_name="config", overrides=["algo=ppo", "cache_dir={tmp_path / 'cache'}"])
plan = make_plan(cfg, registry)
print(",".join(plan.route))
print(sorted(m for m in ("torch", "lightning", "transformers") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    route, heavy = result.stdout.strip().splitlines()[-2:]
    assert route == "base,sft,reference,preferences,reward_model,reward"
    assert heavy == "[]"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_plugins_import_only_the_public_api():
    files = sorted((ROOT / "plugins").rglob("*.py"))
    assert files
    for path in files:
        for name in _imports(path):
            if name == "rlhf_lab" or name.startswith("rlhf_lab."):
                assert name == "rlhf_lab.api", f"{path.relative_to(ROOT)} imports {name}: a plugin imports only rlhf_lab.api"


def test_the_import_check_sees_a_plugin_reaching_past_the_api(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("from rlhf_lab.api import hookimpl\n\ndef f():\n    from rlhf_lab.feedback.simulated import SimulatedFeedback\n")
    assert [n for n in _imports(plugin) if n.startswith("rlhf_lab")] == ["rlhf_lab.api", "rlhf_lab.feedback.simulated"]


def _oversized(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(root)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    return found


def test_no_module_over_400_lines_and_no_function_over_80():
    assert _oversized(PACKAGE) == []


def test_the_size_check_finds_a_long_function(tmp_path):
    (tmp_path / "long.py").write_text("def long():\n" + "    x = 1\n" * 80)
    assert _oversized(tmp_path) == ["long.py:1 long: 81 lines"]
