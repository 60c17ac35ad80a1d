"""The plan of a run and its resolver: which stages a config builds, in which order, and what it refuses,
decided from the config alone (no torch, no work)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from rlhf_lab.config import register_engine_schemas
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.plugin_manager import get_plugin_manager
from rlhf_lab.run.plan import make_plan
from rlhf_lab.run.resolver import Resolver, inputs_of, route


@pytest.fixture(scope="module")
def registry():
    registry = get_plugin_manager().registry
    register_engine_schemas()
    return registry


def plan_of(registry, *overrides: str, tmp_path=None):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="rlhf_lab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return make_plan(cfg, registry, overrides)


@pytest.mark.parametrize("overrides, expected", [
    ((), "base sft reference preferences reward_model reward"),
    (("algo=dpo",), "base sft reference preferences"),
    (("algo=grpo", "reward=rule", "reward.function=rlhf_lab.rewards.rules:word_count"), "base sft reference reward"),
    (("reward.path=/some/model",), "base sft reference reward_model reward"),
    (("reward.init_from_sft=false",), "base sft reference preferences reward_model reward"),
    (("stop_after=preferences",), "base sft preferences"),
    (("stop_after=reward_model", "algo=dpo"), "base sft preferences reward_model"),
])
def test_the_route_follows_the_builders_signatures(registry, overrides, expected):
    plan = plan_of(registry, *overrides)
    assert " ".join(plan.route) == expected
    for name in plan.route[1:]:  # every input comes before the artifact built from it
        assert all(plan.route.index(needed) < plan.route.index(name) for needed in inputs_of(plan.builders[name]))


@pytest.mark.parametrize("overrides, builder, inputs", [
    ((), "train_from_sft", ("preferences", "sft")),
    (("reward.init_from_sft=false",), "train_from_base", ("preferences", "base")),
    (("reward.path=/some/model",), "given", ()),
])
def test_the_config_chooses_how_the_reward_model_is_made(registry, overrides, builder, inputs):
    chosen = plan_of(registry, *overrides).builders["reward_model"]
    assert (chosen.__name__, inputs_of(chosen)) == (builder, inputs)


def test_a_skipped_sft_is_the_starting_model(registry):
    assert plan_of(registry, "sft.enabled=false").builders["sft"].__name__ == "skip"
    assert plan_of(registry).builders["sft"].__name__ == "build"


def test_the_plan_reads_each_components_traits(registry):
    plan = plan_of(registry, "reward=pointwise")
    assert (plan.consumes, plan.learned_reward, plan.preference_kind, plan.uses_preferences) == (("reward",), True, "rating", True)
    dpo = plan_of(registry, "algo=dpo")
    assert (dpo.consumes, dpo.learned_reward, "reward" in dpo.components, "feedback" in dpo.components) == (("preferences",), False, False, True)


@pytest.mark.parametrize("overrides, message", [
    (("algo=dpo", "reward.lr=0.1"), "'reward.lr=0.1': algo=dpo does not use a reward"),
    (("algo=best_of_n", "reward=rule", "reward.function=rlhf_lab.rewards.rules:word_count", "feedback.rounds=2"),
     "'feedback.rounds=2': algo=best_of_n does not use preference feedback (it consumes: reward; the reward rule needs no feedback)"),
    (("stop_after=sft", "eval.samples_per_prompt=2"), "with stop_after=sft this run builds only ['base', 'sft']"),
    (("loop.rounds=2", "algo=best_of_n"), "trains no policy"),
    (("loop.rounds=2", "feedback=dataset", "feedback.path=x.jsonl"), "reads fixed records"),
    (("stop_after=reward_model", "reward=rule", "reward.function=rlhf_lab.rewards.rules:word_count"), "has no model to train"),
    # active selection needs an ensemble of Bradley-Terry reward models that the run trains, and a pool to choose from
    (("feedback.selection=information",), "needs the disagreement of an ensemble: set reward.ensemble_size >= 2"),
    (("feedback.selection=information", "feedback.pool=1", "reward.ensemble_size=2"), "chooses from a pool: set feedback.pool >= 2"),
    (("feedback.selection=vote", "reward.ensemble_size=2"), "feedback.selection must be one of random, disagreement, information"),
    (("feedback.selection=disagreement", "algo=dpo"), "algo=dpo with this reward trains none"),
    (("feedback.selection=disagreement", "reward=pointwise", "reward.ensemble_size=2"), "trains on ratings (use reward=pairwise)"),
    (("reward.ensemble_objective=worst_case",), "needs a spread: set reward.ensemble_size >= 2"),
])
def test_refusals_the_config_decides_come_from_the_plan(registry, overrides, message):
    with pytest.raises(RlhfLabError) as info:
        plan_of(registry, *overrides)
    assert message in str(info.value)


def test_a_selecting_run_is_planned_with_its_pool(registry):
    plan = plan_of(registry, "feedback.selection=disagreement", "reward.ensemble_size=2")
    assert (plan.settings["feedback"].selection, plan.settings["feedback"].pool, plan.reward_models_held) == ("disagreement", 4, 2)


def test_a_sweeps_job_ignores_what_it_does_not_use_and_says_why(registry):
    """`-m algo=dpo,grpo reward=rule ... feedback=dataset feedback.path=...`: each job takes what it uses."""
    GlobalHydra.instance().clear()
    overrides = ("algo=grpo", "reward=rule", "reward.function=rlhf_lab.rewards.rules:word_count", "feedback=dataset", "feedback.path=hh.jsonl")
    with initialize_config_module(config_module="rlhf_lab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    with pytest.raises(RlhfLabError, match="'feedback=dataset': algo=grpo does not use preference feedback"):
        make_plan(cfg, registry, overrides)
    plan = make_plan(cfg, registry, overrides, in_sweep=True)
    assert [o for o, _ in plan.ignored] == ["feedback=dataset", "feedback.path=hh.jsonl"]
    assert plan.ignored[0][1] == "algo=grpo does not use preference feedback (it consumes: reward; the reward rule needs no feedback)"
    assert "preferences" not in plan.route and plan.in_sweep
    assert make_plan(cfg, registry, overrides[:3], in_sweep=True).ignored == ()


def _sft(run, base):
    return f"sft({base})"


def _reference(run, sft):
    return f"reference({sft})"


def test_the_resolver_builds_each_artifact_once_after_its_inputs():
    calls = []

    def base(run):
        calls.append("base")
        return "base"

    def sft(run, base):
        calls.append("sft")
        return f"sft({base})"

    def reference(run, sft):
        calls.append("reference")
        return f"reference({sft})"

    timings = {}
    stages = Resolver(run="ctx", builders={"base": base, "sft": sft, "reference": reference}, given={}, timings=timings)
    assert stages.get("reference") == "reference(sft(base))"
    assert stages.get("sft") == "sft(base)"
    assert calls == ["base", "sft", "reference"]
    assert set(timings) == {"time/base_seconds", "time/sft_seconds", "time/reference_seconds"}
    given = Resolver(run="ctx", builders={"sft": sft}, given={"base": "given"}, timings={})
    assert given.get("sft") == "sft(given)" and given.built_artifact("reference") is None


def test_an_unknown_stage_lists_the_known_ones():
    with pytest.raises(RlhfLabError, match=r"no stage builds 'sft' \(an input of 'reference'\); the stages of this run are: reference"):
        route({"reference": _reference}, ["reference"])
    with pytest.raises(RlhfLabError, match=r"no stage builds 'policy'; the stages of this run are: reference, sft"):
        Resolver("ctx", {"sft": _sft, "reference": _reference}, {}, {}).get("policy")


def test_a_cycle_is_named():
    def a(run, b):
        return None

    def b(run, a):
        return None

    with pytest.raises(RlhfLabError, match=r"in a cycle: a -> b -> a"):
        route({"a": a, "b": b}, ["a"])
