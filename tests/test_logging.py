"""Loggers: wandb offline unless configured; csv and tensorboard write under the run directory."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from rlhf_lab.config import RunConfig
from rlhf_lab.loggers import build_logger, wandb_mode


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path


def test_wandb_is_offline_without_an_account(no_wandb_env):
    assert wandb_mode(None) == "offline"


def test_wandb_follows_the_users_configuration(no_wandb_env, monkeypatch):
    (no_wandb_env / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) == "disabled"
    assert wandb_mode("offline") == "offline"  # an explicit logger.mode wins


def test_wandb_api_key_means_online(no_wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(None) == "online"


@pytest.mark.parametrize("name,expected", [("csv", "CSVLogger"), ("tensorboard", "TensorBoardLogger"), ("wandb", "WandbLogger")])
def test_build_logger_selects_and_writes_under_run_dir(tmp_path, name, expected):
    cfg = OmegaConf.structured(RunConfig)
    cfg.logger.name = name
    cfg.logger.mode = "offline"
    logger = build_logger(cfg, "sft", tmp_path, group="g")
    assert type(logger).__name__ == expected
    assert str(tmp_path) in str(logger.save_dir)
    if name == "wandb":
        assert logger._wandb_init["group"] == "g" and logger._wandb_init["job_type"] == "sft"
        assert logger._wandb_init["mode"] == "offline"
