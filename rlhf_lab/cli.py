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
    """SFT and the optimised policy side by side, as the evaluation measured them, each mean ± its SE; the
    implicit rewards' held-out preference accuracy (SFT's against the starting model), the reward model's,
    and the win rates against SFT (LC: length-controlled) with their bootstrap intervals."""
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
    pairs = metrics.get("eval/heldout_preference_pairs")
    for figure, label in (("pref_accuracy", f"pref. accuracy ({pairs} held-out pairs)"), ("pref_margin", "pref. margin (nats)")):
        if any(f"eval/{name}/{figure}" in metrics for name in ("sft", algo)):
            table.add_row(label, cell("sft", figure), cell(algo, figure))
    if "eval/reward_model/pref_accuracy" in metrics:
        table.add_row("reward-model pref. accuracy", "", cell("reward_model", "pref_accuracy"))
    elif "reward/accuracy" in metrics:
        table.add_row("reward-model held-out accuracy", "", f"{metrics['reward/accuracy']:.3f}")
    for prefix, judged_by in (("", "gold"), ("proxy_", "reward model"), ("judge_", "AI judge")):
        for kind, label in (("", "win rate"), ("lc_", "LC win rate")):
            rate = metrics.get(f"eval/{algo}/{prefix}{kind}win_rate")
            if rate is not None:
                low, high = metrics.get(f"eval/{algo}/{prefix}{kind}win_rate_low"), metrics.get(f"eval/{algo}/{prefix}{kind}win_rate_high")
                interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
                table.add_row(f"{label} by {judged_by} [95%]", "", f"{rate:.3f}{interval}")
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
    # Lightning 2.6's CombinedLoader builds torch's LeafSpec, deprecated from torch 2.13, for every
    # fit's data loaders: nothing of ours calls it, so only that one message is silenced.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    # peft reads `model.is_gradient_checkpointing`, deprecated in transformers 5, whenever it wraps a
    # model (every LoRA run): nothing of ours calls it (models/lora.py uses the new name where it exists).
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


RESUMING_SWEEP = "RLHF_LAB_RESUMING_SWEEP"
"""Set by ``resume=<sweep dir>`` (in the environment, so that launchers' worker processes see it too):
the sweep's jobs that finished before are not run again."""

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
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("rlhf_lab_pid", os.getpid, replace=True)  # conf/config.yaml's run directory

    @hydra.main(version_base="1.3", config_path="pkg://rlhf_lab.conf", config_name="config")
    def app(cfg) -> float | None:
        from rlhf_lab import stopping

        _JOB_STARTED[0] = True
        _quiet_libraries()
        previous_handlers = stopping.install()  # a stop signal is a failure, with its work saved
        try:
            return run_job(cfg)
        finally:
            stopping.restore(previous_handlers)

    app()


def run_job(cfg) -> float | None:
    """One Hydra job: the experiment, its table, and what a failure or a stop means for the exit status
    (a sweep's job that fails is recorded and the sweep goes on)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from rich.console import Console

    from rlhf_lab import stopping
    from rlhf_lab.errors import RlhfLabError, resource_failure
    from rlhf_lab.run.experiment import run
    from rlhf_lab.verdicts import verdict_lines

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    if multirun and os.environ.get(RESUMING_SWEEP) == "1" and (job_dir / "metrics.json").is_file():
        return _finished_before(job_dir, cfg)
    try:
        metrics = run(cfg)
    except RlhfLabError as exc:
        log.error("%s", exc)
        if _debug():
            traceback.print_exc()
        print(f"rlhf_lab: error: {exc}", file=sys.stderr)
        if multirun:  # the sweep goes on; the comparison lists this job and why
            return _job_failed(job_dir, cfg, "refused", str(exc))
        raise SystemExit(2) from None
    except BaseException as exc:
        stop = stopping.stop_of(exc)
        machine = resource_failure(exc, job_dir) if stop is None else None
        if machine is not None:  # a full or vanished disk, memory exhausted: the machine's, not a bug
            log.error("%s", machine, exc_info=exc)
            print(f"rlhf_lab: error: {machine}", file=sys.stderr)
            if multirun:
                return _job_failed(job_dir, cfg, "crashed", machine)
            raise SystemExit(1) from None
        if stop is None:
            if not (multirun and isinstance(exc, Exception)):
                raise
            log.exception("job %s crashed", HydraConfig.get().job.num)
            print(f"rlhf_lab: error: job {HydraConfig.get().job.num} crashed: {type(exc).__name__}: {exc} "
                  f"(traceback in {job_dir / 'rlhf_lab.log'})", file=sys.stderr)
            return _job_failed(job_dir, cfg, "crashed", f"{type(exc).__name__}: {exc}")
        line = stopping.message(stop, job_dir)
        log.error("%s", line)
        print(f"rlhf_lab: {line}", file=sys.stderr)
        if multirun:  # a stop ends the sweep: its comparison says so before the process exits
            from rlhf_lab.sweep import write_comparison, write_job_status

            write_job_status(job_dir, "stopped", f"stopped by {stop.name}")
            write_comparison(Path(HydraConfig.get().sweep.dir))
        raise SystemExit(stop.exit_code) from None
    console = Console()
    if multirun:
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


def _job_failed(job_dir: Path, cfg, status: str, reason: str) -> float | None:
    """A sweep's job that did not finish: recorded for the comparison, and the sweep goes on (a
    sweeper that optimises gets NaN, which Optuna records as a failed trial)."""
    from rlhf_lab.sweep import write_job_status

    write_job_status(job_dir, status, reason)
    return float("nan") if cfg.get("objective") else None


def _finished_before(job_dir: Path, cfg) -> float | None:
    """A resumed sweep's job that finished before: not run again; its figure is what it returned then."""
    import json

    from hydra.core.hydra_config import HydraConfig

    print(f"job {HydraConfig.get().job.num} finished before ({job_dir / 'metrics.json'}): not run again", flush=True)
    return objective_value(json.loads((job_dir / "metrics.json").read_text()), cfg)


def resume_arguments(run_dir: Path) -> list[str]:
    """The command line that continues the run in ``run_dir``: its own overrides (``.hydra/overrides.yaml``)
    and the same run directory, whose checkpoints the resumed stage starts from. For a sweep's
    directory (``multirun.yaml``), the same sweep into it, whose finished jobs are not run again."""
    import yaml

    from rlhf_lab.errors import RlhfLabError

    sweep = run_dir / "multirun.yaml"
    if sweep.is_file():
        try:
            overrides = yaml.safe_load(sweep.read_text())["hydra"]["overrides"]
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise RlhfLabError(f"resume={run_dir}: {sweep} does not say what the sweep ran ({exc})") from None
        own = [o for o in overrides.get("hydra") or [] if not o.startswith(("hydra.mode=", "hydra.sweep.dir="))]
        os.environ[RESUMING_SWEEP] = "1"
        return ["-m", *(overrides.get("task") or []), *own, f"hydra.sweep.dir={run_dir}"]
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        raise RlhfLabError(f"resume={run_dir}: no run there ({overrides} is missing)")
    if (run_dir / "metrics.json").is_file():
        raise RlhfLabError(f"resume={run_dir}: that run finished (its metrics.json is written); there is nothing to resume")
    return [*yaml.safe_load(overrides.read_text()), f"hydra.run.dir={run_dir}"]


def main() -> None:
    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.sweep import SWEEP_FAILURES

    _JOB_STARTED[0] = False
    SWEEP_FAILURES.clear()
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
    if SWEEP_FAILURES:  # every job ran; the sweep as a whole did not succeed
        print(f"rlhf_lab: {len(SWEEP_FAILURES)} job(s) of the sweep did not finish: {'; '.join(SWEEP_FAILURES)}", file=sys.stderr)
        raise SystemExit(1)
