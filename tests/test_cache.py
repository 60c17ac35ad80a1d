"""The content-addressed artifact cache and what goes into its keys."""

from __future__ import annotations

import json
import os

import pytest

from rlhf_lab.cache import COMPLETE_MARKER, ArtifactCache, artifact_key
from rlhf_lab.models.loading import model_fingerprint


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
