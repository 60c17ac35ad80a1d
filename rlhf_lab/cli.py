"""Command line: ``python -m rlhf_lab [overrides]`` runs an experiment (``resume=<run dir>`` continues a
stopped one); ``python -m rlhf_lab plugins`` lists
plugins; ``python -m rlhf_lab describe [group | group=option | --markdown]`` explains every config key;
``python -m rlhf_lab label ...`` runs a labelling campaign (rlhf_lab/labelling/cli.py)."""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

log = logging.getLogger("rlhf_lab")


def print_plugins() -> None:
    """Every plugin, where it came from, and the components it provides."""
    from rich.console import Console
    from rich.table import Table

    from rlhf_lab.plugin_manager import get_plugin_manager

    pm = get_plugin_manager()
    table = Table(title="rlhf_lab plugins")
    for column in ("plugin", "distribution", "kind", "component", "schema"):
        table.add_column(column, overflow="fold")  # wrap long names, never cut them to "…"
    components = pm.registry.all()
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        provided = [c for c in components if c.plugin == name]
        dist = provided[0].distribution if provided else "rlhf_lab (built-in)"
        for dist_plugin, info in pm.list_plugin_distinfo():
            if dist_plugin is plugin:
                dist = f"{info.project_name} {info.version}"
        if not provided:
            table.add_row(name, dist, "-", "(hooks only)", "-")
        for c in provided:
            table.add_row(name, dist, c.kind, c.name, f"{c.schema.__module__}.{c.schema.__qualname__}")
    console = Console()
    if not console.is_terminal:
        # Piped or captured (grep, tests): Rich would squeeze the table into 80 columns and break
        # names across lines; print every row on one line instead (the table is only as wide as it needs).
        console = Console(width=10_000)
    console.print(table)


def summary_table(metrics: dict, algo: str):
    """SFT and the optimised policy side by side, as the evaluation measured them, each mean ± its SE."""
    from rich.table import Table

    def cell(name: str, figure: str) -> str:
        value, se = metrics.get(f"eval/{name}/{figure}"), metrics.get(f"eval/{name}/{figure}_se")
        if value is None:
            return "-"
        return f"{value:.3f}" if se is None else f"{value:.3f} ± {se:.3f}"

    table = Table(title=f"held-out evaluation: sft vs {algo}")
    table.add_column("metric")
    table.add_column("sft", justify="right")
    table.add_column(algo, justify="right")
    for figure in ("gold_reward", "proxy_reward", "kl", "response_length", "eos_rate", "perplexity", "bleu", "rouge_l", "distinct_1", "distinct_2"):
        if any(f"eval/{name}/{figure}" in metrics for name in ("sft", algo)):
            table.add_row(figure, cell("sft", figure), cell(algo, figure))
    if f"eval/{algo}/kl_closed_form" in metrics:
        table.add_row("kl closed form log n - (n-1)/n", "", f"{metrics[f'eval/{algo}/kl_closed_form']:.3f}")
    if f"eval/{algo}/win_rate" in metrics:
        low, high = metrics.get(f"eval/{algo}/win_rate_low"), metrics.get(f"eval/{algo}/win_rate_high")
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        table.add_row("win_rate vs sft (95% bootstrap)", "", f"{metrics[f'eval/{algo}/win_rate']:.3f}{interval}")
    if f"eval/{algo}/proxy_win_rate" in metrics:
        table.add_row("proxy_win_rate vs sft", "", f"{metrics[f'eval/{algo}/proxy_win_rate']:.3f}")
    if "reward/accuracy" in metrics:
        table.add_row("reward-model held-out accuracy", "", f"{metrics['reward/accuracy']:.3f}")
    return table


def print_paths(console) -> None:
    """Where the run directory and each artifact are (``paths.json``), ready for the next command."""
    import json

    from hydra.core.hydra_config import HydraConfig

    from rlhf_lab.run.outputs import PATHS_FILE

    path = Path(HydraConfig.get().runtime.output_dir) / PATHS_FILE
    if path.is_file():
        for name, where in json.loads(path.read_text()).items():
            console.print(f"{name}: {where}", soft_wrap=True, highlight=False)


def objective_value(metrics: dict, cfg) -> float | None:
    """The figure ``cfg.objective`` names (default: the policy's gold reward, else its proxy reward);
    None for a run that evaluates nothing (``stop_after``) unless ``objective`` names one of its figures."""
    from rlhf_lab.errors import RlhfLabError

    algo = cfg.algo.name
    key = cfg.get("objective")
    if key is None:
        key = f"eval/{algo}/gold_reward" if f"eval/{algo}/gold_reward" in metrics else f"eval/{algo}/proxy_reward"
        return metrics.get(key)
    if key not in metrics:
        close = sorted(k for k in metrics if k.split("/", 1)[0] == key.split("/", 1)[0])
        raise RlhfLabError(f"objective={key} is not a figure of this run (metrics.json is written); its {key.split('/', 1)[0]}/ figures: {', '.join(close) or 'none'}")
    return metrics[key]


def _quiet_libraries() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # Lightning prints its own INFO lines; without this they also reach Hydra's root handler twice.
    logging.getLogger("lightning.pytorch").propagate = False
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")


_JOB_STARTED = [False]
"""Set when Hydra calls the job: a Hydra exit before it is a config that did not compose (bad input)."""


def _debug() -> bool:
    """Tracebacks for errors the user can act on only when asked (Hydra's own switch)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def hydra_entry() -> None:
    """The ``@hydra.main`` app (built after plugins have registered their config schemas)."""
    import hydra

    from rlhf_lab.config import register_engine_schemas
    from rlhf_lab.plugin_manager import get_plugin_manager

    get_plugin_manager()
    register_engine_schemas()

    @hydra.main(version_base="1.3", config_path="pkg://rlhf_lab.conf", config_name="config")
    def app(cfg) -> float:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from rich.console import Console

        from rlhf_lab.errors import RlhfLabError
        from rlhf_lab.run.experiment import run
        from rlhf_lab.stats import verdict_lines

        _JOB_STARTED[0] = True
        _quiet_libraries()
        try:
            metrics = run(cfg)
        except RlhfLabError as exc:
            log.error("%s", exc)
            if _debug():
                traceback.print_exc()
            print(f"rlhf_lab: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        console = Console()
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # The sweep ends with one table of every job (rlhf_lab.sweep); a job names itself only.
            overrides = " ".join(HydraConfig.get().overrides.task) or "(no overrides)"
            console.print(f"job {HydraConfig.get().job.num} ({overrides}) finished", soft_wrap=True, highlight=False)
        elif not cfg.get("stop_after"):
            console.print(summary_table(metrics, cfg.algo.name))
            for line in verdict_lines(metrics, cfg.algo.name):
                console.print(line)
        print_paths(console)
        try:
            return objective_value(metrics, cfg)  # what a sweeper optimises
        except RlhfLabError as exc:
            print(f"rlhf_lab: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    app()


def resume_arguments(run_dir: Path) -> list[str]:
    """The command line that continues the run in ``run_dir``: its own overrides (``.hydra/overrides.yaml``)
    and the same run directory, whose checkpoints the resumed stage starts from."""
    import yaml

    from rlhf_lab.errors import RlhfLabError

    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        raise RlhfLabError(f"resume={run_dir}: no run there ({overrides} is missing)")
    if (run_dir / "metrics.json").is_file():
        raise RlhfLabError(f"resume={run_dir}: that run finished (its metrics.json is written); there is nothing to resume")
    return [*yaml.safe_load(overrides.read_text()), f"hydra.run.dir={run_dir}"]


def main() -> None:
    from rlhf_lab.errors import RlhfLabError

    _JOB_STARTED[0] = False
    try:
        resume = [a for a in sys.argv[1:] if a.startswith("resume=")]
        if resume:
            if len(sys.argv) != 2:
                raise RlhfLabError("resume=<run dir> takes no other argument: the run continues with the config it started with")
            sys.argv = [sys.argv[0], *resume_arguments(Path(resume[0].split("=", 1)[1]))]
        if len(sys.argv) > 1 and sys.argv[1] == "plugins":
            print_plugins()
            return
        if len(sys.argv) > 1 and sys.argv[1] == "label":
            from rlhf_lab.labelling.cli import main as label_main

            label_main(sys.argv[2:])
            return
        if len(sys.argv) > 1 and sys.argv[1] == "describe":
            from rlhf_lab import describe

            args = sys.argv[2:]
            print(describe.markdown() if args == ["--markdown"] else describe.text(args[0] if args else None), end="")
            return
        try:
            hydra_entry()
        except SystemExit as exc:
            # Hydra reports an override it cannot parse or merge, or an unknown option, with its own
            # message and exit status 1; a bad input exits 2 whoever reports it.
            if exc.code == 1 and not _JOB_STARTED[0]:
                raise SystemExit(2) from None
            raise
    except RlhfLabError as exc:  # plugin loading and registration, before Hydra's job starts
        if _debug():
            traceback.print_exc()
        print(f"rlhf_lab: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
