"""Configs: every option of every group composes and builds; bad values fail before any work."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from rlhf_lab.config import LoggerConfig, TrainerConfig, register_engine_schemas, to_object
from rlhf_lab.training import check_trainer_config
from rlhf_lab.errors import RlhfLabError, UnknownComponentError
from rlhf_lab.plugin_manager import get_plugin_manager

from conftest import run_cli

CONF = resources.files("rlhf_lab.conf")
GROUPS = ["task", "feedback", "reward", "algo", "trainer", "logger"]


def _options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


@pytest.fixture(scope="module")
def registry():
    pm = get_plugin_manager()
    register_engine_schemas()
    return pm.registry


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="rlhf_lab.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes_and_builds(registry, group, option, tmp_path, monkeypatch):
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text('{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}\n')
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,response\n" + "".join(f"p{i},r{i}\n" for i in range(10)))
    extra = {
        ("feedback", "dataset"): [f"feedback.path={prefs}"],
        ("feedback", "ai_judge"): ["feedback.model=a/judge"],  # loaded only when it judges
        ("reward", "rule"): ["reward.function=rlhf_lab.rewards.rules:word_count"],
        ("task", "dataset"): [f"task.path={prompts}"],
    }
    overrides = [f"{group}={option}"] + extra.get((group, option), [])
    cfg = _compose(overrides)
    built = to_object(cfg[group], group)
    if group in ("task", "feedback", "reward", "algo"):
        component = registry.get(group, cfg[group].name)
        # a preset (algo=ipo) is another component's schema with one setting chosen
        assert isinstance(built, component.schema) and (built.name == option or getattr(built, "loss", None) == option)
        task = registry.get("task", cfg.task.name).factory(to_object(cfg.task, "task"), seed=0)
        if group == "task":
            assert task.train_prompts and task.eval_prompts and task.sft_train
        elif group == "feedback":
            assert hasattr(component.factory(built, task), "collect")
        elif group == "reward":
            reward = component.factory(built)
            consumes = component.traits["consumes"]
            assert set(consumes) <= {"reward_model"} and callable(reward.reward_function)
            assert component.traits["feedback_kind"] in (("ranking", "rating") if consumes else (None,))
        else:  # algorithms need trained models to build; their factory must say what they consume
            assert set(component.traits["consumes"]) <= {"reward", "preferences"} and component.traits["consumes"]
    elif group == "logger":
        assert isinstance(built, LoggerConfig) and built.name == option
    else:
        assert isinstance(built, TrainerConfig)
        if built.accelerator == "cpu" or built.accelerator == "auto":
            check_trainer_config(cfg)  # buildable on this machine
        else:
            # A GPU preset: its strategy and precision built as they would be, on the CPU (2 devices when
            # it takes every GPU: the sharded strategy needs its process count). Its bf16 is the GPU's:
            # how fast this CPU runs bf16 is not the question.
            monkeypatch.setattr("rlhf_lab.training.check_cpu_bf16", lambda precision: None)
            devices = 2 if built.devices == -1 else built.devices
            plan = check_trainer_config(OmegaConf.merge(cfg, {"trainer": {"accelerator": "cpu", "devices": devices}}))
            assert plan.world_size == devices


@pytest.mark.parametrize("trainer", ["ddp_cpu", "fsdp_cpu", "deepspeed_cpu"])
@pytest.mark.parametrize("algo", ["ppo", "a2c", "dpo", "reinforce", "rloo", "grpo", "best_of_n"])
def test_every_algorithm_with_its_defaults_passes_the_checks_of_a_two_process_run(algo, trainer, tmp_path):
    """Default batch sizes divide over 2 processes: `trainer=ddp_cpu` works without further overrides."""
    from rlhf_lab.plugin_manager import get_plugin_manager
    from rlhf_lab.run.plan import make_plan
    from rlhf_lab.run.preflight import check_trainer

    plan = make_plan(_compose([f"algo={algo}", f"trainer={trainer}", f"cache_dir={tmp_path / 'cache'}"]), get_plugin_manager().registry)
    trainer_plan = check_trainer(plan, worker=False)
    assert trainer_plan.world_size == 2 and trainer_plan.device_type == "cpu"


def test_every_registered_component_has_a_config_option(registry):
    for component in registry.all():
        cfg = _compose([f"{component.kind}={component.name}"])
        assert cfg[component.kind].name == component.name


def test_wrong_type_fails_naming_the_key(registry):
    with pytest.raises(Exception) as info:
        _compose(["algo.lr=abc"])
    assert "algo.lr" in str(info.value)


def test_unknown_key_fails_naming_the_key(registry):
    with pytest.raises(Exception) as info:
        _compose(["algo.learning_rate=1e-5"])
    assert "learning_rate" in str(info.value)


def test_invalid_value_is_caught_by_the_schema_check(registry):
    cfg = _compose(["algo.minibatch_size=7"])
    with pytest.raises(RlhfLabError, match="algo.rollout_batch_size .* multiple of algo.minibatch_size"):
        to_object(cfg.algo, "algo")


def test_unknown_component_name_lists_what_exists(registry):
    with pytest.raises(UnknownComponentError) as info:
        registry.get("algo", "trpo")
    message = str(info.value)
    assert "unknown algo 'trpo'" in message and "ppo" in message and "rlhf_lab (built-in)" in message


def test_cli_rejects_wrong_type_before_any_work(tmp_path: Path):
    result = run_cli(["algo.lr=abc", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode != 0
    assert "algo.lr" in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "outputs" / "cache").exists()


def test_cli_unknown_algorithm_lists_options(tmp_path: Path):
    result = run_cli(["algo=trpo"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'algo/trpo'" in result.stderr and "ppo" in result.stderr


def test_cli_cfg_job_and_info(tmp_path: Path):
    job = run_cli(["--cfg", "job", "algo.lr=1e-5"], cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    assert "lr: 1.0e-05" in job.stdout and "name: ppo" in job.stdout
    helped = run_cli(["--help"], cwd=tmp_path)
    assert helped.returncode == 0 and helped.stdout.startswith("rlhf_lab is powered by Hydra")
    assert "algo: a2c, best_of_n, dpo, grpo, ppo, reinforce, rloo" in helped.stdout and "reward: pairwise, pointwise, rule" in helped.stdout
    info = run_cli(["--info"], cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "pkg://rlhf_lab.conf" in info.stdout


def test_a_trainer_this_machine_cannot_build_fails_before_any_work(tmp_path, refused):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, err = refused(["trainer=gpu_bf16", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"])
    assert code == 2
    assert "rlhf_lab: error: trainer:" in err and "trainer.accelerator=gpu" in err
    assert not (tmp_path / "cache").exists()


def test_responses_that_cannot_fit_the_model_fail_before_training(tmp_path, refused):
    code, err = refused(["algo.sampling.max_new_tokens=70", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"])
    assert code == 2
    assert "max_new_tokens=70 (algo.sampling or eval.sampling) leaves no room for a prompt in the model's 64 positions" in err
    assert not (tmp_path / "cache" / "sft").exists()
    code, err = refused(["algo.sampling.max_new_tokens=60", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"])
    assert code == 2
    assert "prompt of 9 tokens is over its limit of 4 (the model's 64 positions less max_new_tokens=60), the longest" in err
    assert not (tmp_path / "cache" / "sft").exists()


@pytest.mark.parametrize("override,message", [
    ("+algo.lora_r=8", "unknown config key 'algo.lora_r': PPOConfig has name, lr,"),
    ("+foo=1", "unknown config key 'foo': RunConfig has seed,"),
    ("+algo.sampling.bar=2", "unknown config key 'algo.sampling.bar': SamplingConfig has temperature, top_k"),
])
def test_a_key_added_with_plus_that_no_schema_has_is_refused(registry, override, message):
    from rlhf_lab.config import check_known_keys

    with pytest.raises(RlhfLabError, match=message):
        check_known_keys(_compose([override]))
    check_known_keys(_compose(["reward=rule", "+reward.kwargs.n=3"]))  # a dict field takes any key


def test_docs_config_md_is_the_schemas_own_description(registry):
    """docs/config.md is generated; regenerate it with `python -m rlhf_lab describe --markdown > docs/config.md`."""
    from rlhf_lab import describe

    docs = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    assert docs.read_text() == describe.markdown()


def test_every_config_key_says_what_it_means(registry):
    from rlhf_lab import describe

    undocumented = [k.name for _, _, keys in describe.sections() for k in keys if not k.doc]
    assert not undocumented


def test_describe_one_option_from_the_command_line(tmp_path):
    result = run_cli(["describe", "algo=dpo"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("algo=dpo: ") and "algo.beta" in result.stdout and "algo.clip_range" not in result.stdout
    helped = run_cli(["--help"], cwd=tmp_path).stdout
    for command in ("describe [group | group=option]", "rlhf_lab plugins", "rlhf_lab label <command>", "rlhf_lab resume=<run dir", "rlhf_lab -m "):
        assert command in helped, command
    unknown = run_cli(["describe", "algo=nope"], cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown algo 'nope'" in unknown.stderr


@pytest.mark.parametrize("preset", ["ipo", "cdpo", "simpo"])
def test_a_dpo_preset_is_dpo_with_its_loss(registry, preset):
    built = to_object(_compose([f"algo={preset}", "algo.beta=0.2"])["algo"], "algo")
    assert (built.name, built.loss, built.beta) == ("dpo", preset, 0.2)
