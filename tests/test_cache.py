"""The content-addressed artifact cache and what goes into its keys."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time

import pytest

from rlhf_lab.cache import COMPLETE_MARKER, CORRUPT_DIR, ArtifactCache, _locked, artifact_key
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.models.loading import model_fingerprint

from conftest import SUBPROCESS_TIMEOUT


def test_key_changes_with_config_and_upstream_only():
    base = artifact_key("sft", {"lr": 1e-3, "epochs": 2}, ["up"])
    assert artifact_key("sft", {"epochs": 2, "lr": 1e-3}, ["up"]) == base  # key order is irrelevant
    assert artifact_key("sft", {"lr": 3e-3, "epochs": 2}, ["up"]) != base
    assert artifact_key("sft", {"lr": 1e-3, "epochs": 2}, ["other"]) != base
    assert artifact_key("reward", {"lr": 1e-3, "epochs": 2}, ["up"]) != base


def test_builds_once_then_reuses(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []

    def build(out):
        calls.append(out)
        (out / "weights.txt").write_text("w")
        return {"loss": 0.5}

    path, metrics = cache.get_or_build("sft", "k1", build)
    again, metrics_again = cache.get_or_build("sft", "k1", build)
    assert len(calls) == 1 and path == again == tmp_path / "sft" / "k1"
    assert metrics == metrics_again == {"loss": 0.5}
    assert (path / "weights.txt").read_text() == "w" and (path / COMPLETE_MARKER).is_file()
    assert [p.name for p in (tmp_path / "sft").iterdir()] == ["k1"]  # no temporary left behind
    recorded = json.loads((path / COMPLETE_MARKER).read_text())
    assert recorded["key"] == "k1" and recorded["files"]["weights.txt"][0] == 1
    assert set(recorded["files"]) == {"weights.txt", "metrics.json"}


def test_failed_build_leaves_nothing_to_reuse(tmp_path):
    cache = ArtifactCache(tmp_path)

    def crash(out):
        (out / "half.bin").write_text("x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cache.get_or_build("reward", "k", crash)
    assert list((tmp_path / "reward").iterdir()) == []
    path, metrics = cache.get_or_build("reward", "k", lambda out: {"ok": 1})
    assert metrics == {"ok": 1} and not (path / "half.bin").exists()


def test_an_artifact_published_meanwhile_by_another_run_is_kept(tmp_path):
    cache = ArtifactCache(tmp_path)

    def build_while_another_run_finishes(out):
        theirs = tmp_path / "sft" / "k"
        theirs.mkdir(parents=True)
        (theirs / "metrics.json").write_text(json.dumps({"who": "them"}))
        (theirs / COMPLETE_MARKER).write_text("k\n")
        return {"who": "us"}

    path, metrics = cache.get_or_build("sft", "k", build_while_another_run_finishes)
    assert metrics == {"who": "them"}
    assert json.loads((path / "metrics.json").read_text()) == {"who": "them"}


def test_an_incomplete_leftover_is_replaced(tmp_path):
    leftover = tmp_path / "sft" / "k"
    leftover.mkdir(parents=True)
    (leftover / "junk").write_text("x")
    path, metrics = ArtifactCache(tmp_path).get_or_build("sft", "k", lambda out: {"fresh": True})
    assert metrics == {"fresh": True} and not (path / "junk").exists()


def test_model_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first = model_fingerprint(str(tmp_path))
    assert first.startswith(f"dir:{tmp_path.resolve()}:") and model_fingerprint(str(tmp_path)) == first
    (tmp_path / "model.safetensors").write_bytes(b"12345")
    second = model_fingerprint(str(tmp_path))
    assert second != first
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    assert model_fingerprint(str(tmp_path)) != second
    assert model_fingerprint("org/some-model") == "hub:org/some-model"


def _build_slowly(root: str, log_path: str, queue) -> None:
    def build(out):
        with open(log_path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough that every other process arrives while this one builds
        (out / "w.bin").write_bytes(b"weights")
        return {"builder": os.getpid()}

    queue.put(ArtifactCache(root).get_or_build("sft", "k", build)[1])


def test_concurrent_runs_build_an_artifact_once_and_all_reuse_it(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue, builds = context.Queue(), tmp_path / "builds.log"
    workers = [context.Process(target=_build_slowly, args=(str(tmp_path / "cache"), str(builds), queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=SUBPROCESS_TIMEOUT) for _ in workers]
    for worker in workers:
        worker.join()
    assert len(builds.read_text().splitlines()) == 1
    assert len({r["builder"] for r in results}) == 1  # all four got the one build's artifact


def _write(out, weights=b"0123456789"):
    (out / "model.safetensors").write_bytes(weights)
    return {"loss": 0.25}


@pytest.mark.parametrize("damage", ["truncate_weights", "flip_a_byte", "edit_metrics", "delete_weights", "old_marker"])
def test_a_damaged_artifact_is_moved_aside_with_a_warning_and_rebuilt(tmp_path, caplog, damage):
    cache, calls = ArtifactCache(tmp_path), []

    def build(out):
        calls.append(1)
        return _write(out)

    path, _ = cache.get_or_build("reward_model", "k", build)
    if damage == "truncate_weights":
        (path / "model.safetensors").write_bytes(b"01234")
    elif damage == "flip_a_byte":  # same size: only the checksum can tell
        (path / "model.safetensors").write_bytes(b"0123456788")
    elif damage == "edit_metrics":
        (path / "metrics.json").write_text('{"loss": 0.26}\n')
    elif damage == "delete_weights":
        (path / "model.safetensors").unlink()
    else:  # an artifact published by rlhf_lab <= 0.2, whose marker holds only the key
        (path / COMPLETE_MARKER).write_text("k\n")
    with caplog.at_level(logging.WARNING, logger="rlhf_lab.cache"):
        again, metrics = cache.get_or_build("reward_model", "k", build)
    assert len(calls) == 2 and again == path and metrics == {"loss": 0.25}
    assert (path / "model.safetensors").read_bytes() == b"0123456789"
    moved = list((tmp_path / CORRUPT_DIR).iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("reward_model-k-")
    assert "failed verification" in caplog.text and str(moved[0]) in caplog.text
    cache.get_or_build("reward_model", "k", build)
    assert len(calls) == 2  # the rebuilt artifact verifies


def test_temporaries_of_killed_builds_are_removed_unless_their_build_still_runs(tmp_path):
    stage = tmp_path / "sft"
    stage.mkdir()
    killed_same, killed_other, running = stage / ".k.tmp-aa", stage / ".dead.tmp-bb", stage / ".live.tmp-cc"
    for leftover in (killed_same, killed_other, running):
        leftover.mkdir()
        (leftover / "half.bin").write_bytes(b"x")
    (tmp_path / ".locks").mkdir()
    with _locked(tmp_path / ".locks" / "sft-live") as held:  # a build of "live" that is still running
        assert held
        ArtifactCache(tmp_path).get_or_build("sft", "k", _write)
        assert not killed_same.exists() and not killed_other.exists()
        assert running.exists()


def test_a_cache_directory_that_cannot_hold_artifacts_is_refused_naming_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(RlhfLabError, match=f"cache_dir={blocker}/cache: cannot write"):
        ArtifactCache(blocker / "cache").check_writable()
    ArtifactCache(tmp_path / "fine").check_writable()
