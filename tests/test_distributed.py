"""Several processes for one run: data sharded by global batch, and the real CLI on 2 CPU processes (gloo)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY_FEEDBACK, TINY_UPSTREAM, read_metrics, run_cli
from rlhf_lab.resume import rank_share, shuffled_loader

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)


@pytest.mark.parametrize("size,world", [(8, 2), (7, 2), (5, 3), (1, 2), (2, 3), (9, 4)])
def test_rank_shares_cover_a_batch_in_order_with_sizes_within_one(size, world):
    batch = list(range(100, 100 + size))
    shares = [rank_share(batch, rank, world) for rank in range(world)]
    assert all(shares), shares  # every rank trains every step
    if size >= world:
        assert sum(shares, []) == batch  # contiguous parts, in order, nothing repeated
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    else:  # ranks past the end repeat an item
        assert [s[0] for s in shares] == [batch[r % size] for r in range(world)]


def _epoch(loader) -> list[list[int]]:
    out = []
    for batch in loader:
        out.append(batch.tolist())
        loader.completed += 1
    return out


def test_sharded_loaders_split_every_global_batch_of_the_unsharded_order_and_resume_alike():
    make = lambda: shuffled_loader(list(range(11)), 4, torch.tensor, shuffle=True, seed=3)  # noqa: E731
    whole = make()
    ranks = [make(), make()]
    for rank, loader in enumerate(ranks):
        loader.shard(rank, 2)
    for _ in range(2):  # two epochs: the second order differs and both ranks follow it
        expected = _epoch(whole)
        parts = [_epoch(loader) for loader in ranks]
        assert [a + b for a, b in zip(*parts)] == expected
        assert [len(p) for p in parts[0]] == [2, 2, 2]  # 4 + 4 + 3 items: 2|2, 2|2, 2|1
        assert [len(p) for p in parts[1]] == [2, 2, 1]
    # A rank restored mid-epoch continues with its part of the next global batch.
    resumed = make()
    resumed.shard(1, 2)
    resumed.load_state_dict({"epoch": 2, "completed": 1})
    third = _epoch(whole)
    assert _epoch(resumed) == [rank_share(b, 1, 2) for b in third[1:]]


# Batch sizes divisible by 2 (they are global); a checkpoint every second step, so a kill lands between two.
ARGS = [
    *TINY_UPSTREAM, *TINY_FEEDBACK, "algo.total_episodes=64", "algo.rollout_batch_size=16", "algo.minibatch_size=8",
    "algo.ppo_epochs=1", "algo.kl_controller=adaptive", "algo.kl_horizon=64", "logger=csv",
]
TWO = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
FSDP = ["trainer=fsdp_cpu"]
DEEPSPEED = ["trainer=deepspeed_cpu"]  # ZeRO stage 3

# Loaded at start-up by every Python process given its directory on PYTHONPATH (rank 0 and the workers
# it starts). KILL_RANK_1: rank 1 (the environment rank 0 gives its workers) SIGKILLs itself after its
# third policy step. SHARD_PROBE=<dir>: every rank writes how many of each stage's trained parameters it holds.
INJECT = """
import json, os
from pathlib import Path

hooks = []
if os.environ.get("RANK") == "1" and os.environ.get("KILL_RANK_1"):
    import signal
    from lightning.pytorch.callbacks import Callback

    class KillAfter(Callback):
        seen = 0
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            KillAfter.seen += 1
            if KillAfter.seen == 3:
                os.kill(os.getpid(), signal.SIGKILL)
    hooks.append(lambda stage: [KillAfter()] if stage == "policy" else [])

if os.environ.get("SHARD_PROBE"):
    from lightning.pytorch.callbacks import Callback

    class Probe(Callback):
        def __init__(self, stage):
            self.stage = stage
        def on_train_start(self, trainer, module):
            params = [p for p in module.parameters() if p.requires_grad]
            # FSDP: DTensor shards; ZeRO-3: each parameter's partition (ds_tensor) and its whole size (ds_numel).
            local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
                        for p in params)
            total = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params)
            # The frozen reference of a policy step: sharded (FSDP) or partitioned (ZeRO-3) as well.
            frozen = getattr(getattr(module, "frozen", None), "reference", None)
            frozen_sharded = frozen is not None and any(hasattr(p, "to_local") or hasattr(p, "ds_id") for p in frozen.parameters())
            out = Path(os.environ["SHARD_PROBE"]) / f"{self.stage}-rank{trainer.global_rank}.json"
            out.write_text(json.dumps({"local": local, "total": total, "tensors": len(params), "frozen_sharded": frozen_sharded}))
    hooks.append(lambda stage: [Probe(stage)])

if hooks:
    import rlhf_lab.plugin_manager as plugin_manager
    from rlhf_lab import hookimpl

    class Injected:
        @hookimpl
        def rlhf_lab_callbacks(self, cfg, stage):
            return [callback for hook in hooks for callback in hook(stage)]

    plugin_manager._PM = plugin_manager.build_plugin_manager(extra_plugins=(Injected(),))
"""


def _figures(run_dir) -> dict:
    return {k: v for k, v in read_metrics(run_dir).items() if not k.startswith("time/")}


def _injected_env(tmp_path, **variables) -> dict:
    inject = tmp_path / "inject"
    inject.mkdir(exist_ok=True)
    (inject / "sitecustomize.py").write_text(INJECT)
    return {"PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")]), **variables}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The same PPO run in one process and in two (DDP), each with its own cache."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in (("one", []), ("ddp", TWO)):
        result = run_cli([*ARGS, *extra, f"cache_dir={root / ('cache_' + name)}", f"hydra.run.dir={root / name}"], cwd=root)
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = root / name
    out["ddp_cache"] = root / "cache_ddp"
    return out


def test_two_processes_build_once_write_once_and_match_one_process(runs):
    # Rank 0 alone built each artifact (one per stage, no leftovers) and wrote the outputs, once.
    for stage in ("base", "sft", "preferences", "reward_model"):
        assert len(list((runs["ddp_cache"] / stage).iterdir())) == 1, stage
    run = runs["ddp"]
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["eval", "policy", "reward_model", "sft"]
    assert (run / "ranks" / "rank1.log").is_file() and not (run / "ranks" / "spec.pkl").exists()
    rank1 = (run / "ranks" / "rank1.log").read_text()
    assert "[rank 1]" in rank1 and "evaluate" not in rank1  # it trained; it never evaluated
    assert list(run.glob("**/metrics.json")) == [run / "metrics.json"]
    assert "started ranks 1-1" in (run / "rlhf_lab.log").read_text()

    # The same figures as one process, within noise: a global batch is split, not repeated, so SFT and
    # reward-model training take the same steps on the same data (only the float sums are grouped
    # otherwise); the policy samples with other random streams.
    a, b = _figures(runs["one"]), _figures(run)
    assert abs(a["sft/val_loss"] - b["sft/val_loss"]) < 0.01
    assert abs(a["reward/accuracy"] - b["reward/accuracy"]) < 0.05
    for figure in ("gold_reward", "proxy_reward"):
        se = (a[f"eval/ppo/{figure}_se"] ** 2 + b[f"eval/ppo/{figure}_se"] ** 2) ** 0.5
        assert abs(a[f"eval/ppo/{figure}"] - b[f"eval/ppo/{figure}"]) < 3 * se, figure
    assert b["eval/ppo/kl"] < 3 * max(a["eval/ppo/kl"], 0.05)


def _kill_rank_1_then_resume(tmp_path, args: list[str]) -> Path:
    """Run ``args`` with rank 1 killed in PPO (the run must fail naming it), then the same command again."""
    env = _injected_env(tmp_path, KILL_RANK_1="1")
    killed = run_cli([*args, f"hydra.run.dir={tmp_path / 'killed'}"], cwd=tmp_path, env=env)
    assert killed.returncode != 0
    assert "rank 1 was killed by signal SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "metrics.json").exists()
    again = run_cli([*args, f"hydra.run.dir={tmp_path / 'again'}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "policy: resuming from " in (tmp_path / "again" / "rlhf_lab.log").read_text()
    json.loads((tmp_path / "again" / "paths.json").read_text())
    return tmp_path / "again"


def _grad_norms(run_dir: Path) -> list[float]:
    """The policy's gradient norm (before clipping) at each PPO iteration, from rank 0's csv log."""
    with open(run_dir / "csv" / "policy" / "metrics.csv") as f:
        return [float(row["losses/grad_norm"]) for row in csv.DictReader(f) if row.get("losses/grad_norm")]


def _same_run(a: Path, b: Path) -> None:
    assert _figures(a) == _figures(b)
    assert (a / "policy" / "model.safetensors").read_bytes() == (b / "policy" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("strategy", [FSDP, DEEPSPEED], ids=["fsdp", "deepspeed_zero3"])
def test_sharded_training_holds_half_of_every_trained_model_trains_as_ddp_does_and_resumes_bit_for_bit(runs, tmp_path, strategy):
    probe = tmp_path / "probe"
    probe.mkdir()
    sharded = run_cli([*ARGS, *strategy, f"cache_dir={tmp_path / 'cache_a'}", f"hydra.run.dir={tmp_path / 'sharded'}"],
                      cwd=tmp_path, env=_injected_env(tmp_path, SHARD_PROBE=str(probe)))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    # Each rank held about half of every stage's trained weights (PPO: policy and critic).
    for stage in ("sft", "reward_model", "policy"):
        held = [json.loads((probe / f"{stage}-rank{rank}.json").read_text()) for rank in (0, 1)]
        assert held[0]["total"] == held[1]["total"] > 0
        # (ZeRO pads an odd-sized parameter's two partitions to equal sizes: at most one element each.)
        assert 0 <= sum(h["local"] for h in held) - held[0]["total"] <= held[0]["tensors"], stage
        assert all(0.4 < h["local"] / h["total"] < 0.6 for h in held), (stage, held)
        assert all(h["frozen_sharded"] == (stage == "policy") for h in held), (stage, held)
    # The same optimisation as DDP: identical global batches and gradients (up to float summation order).
    assert _grad_norms(tmp_path / "sharded") == pytest.approx(_grad_norms(runs["ddp"]), rel=1e-3)
    a, b = _figures(tmp_path / "sharded"), _figures(runs["ddp"])
    assert abs(a["sft/val_loss"] - b["sft/val_loss"]) < 1e-4
    assert abs(a["reward/accuracy"] - b["reward/accuracy"]) < 1e-6
    for figure in ("gold_reward", "proxy_reward"):
        se = (a[f"eval/ppo/{figure}_se"] ** 2 + b[f"eval/ppo/{figure}_se"] ** 2) ** 0.5
        assert abs(a[f"eval/ppo/{figure}"] - b[f"eval/ppo/{figure}"]) < 3 * se, figure
    # Rank 0 saved a whole model (gathered from the shards) that loads as a plain transformers model.
    from transformers import AutoModelForCausalLM

    assert sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tmp_path / "sharded" / "policy").parameters()) > 0
    # Rank 1 killed in PPO: every rank's random streams and the data position come back from the
    # checkpoint (DDP shares this machinery; under FSDP the checkpoint is restored after on_fit_start;
    # DeepSpeed's is a directory of partitions). The upstream stages come from the uninterrupted run's
    # cache: only the policy stage is redone (its cached artifact is removed, or the run would reuse it).
    shutil.rmtree(tmp_path / "cache_a" / "policy")
    again = _kill_rank_1_then_resume(tmp_path, [*ARGS, *strategy, f"cache_dir={tmp_path / 'cache_a'}"])
    _same_run(again, tmp_path / "sharded")


def test_zero_stage_2_keeps_whole_weights_and_gives_ddp_figures(runs, tmp_path):
    """ZeRO-2 partitions gradients and AdamW moments, not weights: generation is not in lockstep, the
    engine clips (to algo.max_grad_norm) and steps, and rank 0 copies the whole policy out of the engine."""
    # DDP's upstream stages, not its policy (the strategy is not part of a key: the policy would be reused).
    shutil.copytree(runs["ddp_cache"], tmp_path / "cache", ignore=lambda folder, names: ["policy"] if Path(folder) == runs["ddp_cache"] else [])
    result = run_cli([*ARGS, *DEEPSPEED, "trainer.zero_stage=2", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'zero2'}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "zero2" / "checkpoints" / "policy" / "last.ckpt" / "latest").is_file()  # DeepSpeed's directory
    # The same rollouts and updates as DDP: each iteration's gradient norm (above algo.max_grad_norm=1,
    # so the engine's clipping shapes every later one) equal up to float summation order.
    assert _grad_norms(tmp_path / "zero2") == pytest.approx(_grad_norms(runs["ddp"]), rel=1e-4)
    assert max(_grad_norms(runs["ddp"])) > 1.0
    a, b = _figures(tmp_path / "zero2"), _figures(runs["ddp"])
    for figure in ("gold_reward", "proxy_reward"):
        se = (a[f"eval/ppo/{figure}_se"] ** 2 + b[f"eval/ppo/{figure}_se"] ** 2) ** 0.5
        assert abs(a[f"eval/ppo/{figure}"] - b[f"eval/ppo/{figure}"]) < 3 * se, figure
    assert abs(a["eval/ppo/kl"] - b["eval/ppo/kl"]) < 3 * (a["eval/ppo/kl_se"] ** 2 + b["eval/ppo/kl_se"] ** 2) ** 0.5


# What a one-task SLURM job (hydra/launcher=slurm) shows its process: Lightning would take the job's
# single task as the whole world and refuse 2 devices.
SLURM_JOB = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "sweep", "SLURM_JOB_ID": "12",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def test_a_multirun_of_two_process_jobs_starts_ranks_per_job_not_a_sweep_per_rank(tmp_path):
    """Also inside a SLURM job's environment: the ranks are the run's own, not the job's tasks."""
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "task.num_sft_examples=400", "sft.epochs=1", "trainer.progress_bar=none", *TWO, "stop_after=sft", "seed=0,1", "logger=csv",
                      f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=SLURM_JOB)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]
    for job in ("0", "1"):
        assert read_metrics(sweep / job)["sft/val_loss"] > 0
        assert "started ranks 1-1" in (sweep / job / "rlhf_lab.log").read_text()
    assert len(list((tmp_path / "cache" / "sft").iterdir())) == 2  # one SFT per seed, none per rank
