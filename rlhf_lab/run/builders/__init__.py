"""One module per artifact: its cache key and its build.

Every builder is ``builder(run, <input>, ...)`` (:mod:`rlhf_lab.run.resolver`): its parameters after
the run context name the artifacts it is built from, and nothing else declares them. Where the config
decides how an artifact is made (a given model or a trained one, a learned reward or a rule),
:func:`choose` picks one of several builders; the route follows the chosen builders' signatures.

    base -> sft -> reference                      every run (the start policy and the KL anchor)
    sft -> preferences                            feedback on SFT samples (or a dataset)
    preferences, sft|base -> reward_model         a learned reward model (or none: reward.path)
    reward_model | nothing -> reward              the run-time reward function

Builders import torch inside their bodies, so the plan (which reads their signatures) imports none.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from rlhf_lab.run.builders import preferences, reference, reward, reward_model, sft


def choose(settings: Mapping[str, Any], components: Mapping[str, Any]) -> dict[str, Callable]:
    """The builder of each artifact a run may need, as the config decides.

    The starting model (``base``) is not among them: it is built before the pre-flight, which reads it,
    and handed to the resolver as given (:func:`rlhf_lab.run.experiment.run_experiment`).
    """
    chosen = {
        "base": _given,
        "sft": sft.build if settings["sft"].enabled else sft.skip,
        "reference": reference.build,
        "preferences": preferences.build,
    }
    if "reward" in components:
        reward_settings = settings["reward"]
        if "reward_model" in components["reward"].traits["consumes"]:
            if getattr(reward_settings, "path", None):
                chosen["reward_model"] = reward_model.given
            elif getattr(reward_settings, "init_from_sft", True):
                chosen["reward_model"] = reward_model.train_from_sft
            else:
                chosen["reward_model"] = reward_model.train_from_base
            chosen["reward"] = reward.learned
        else:
            chosen["reward"] = reward.rule
    return chosen


def _given(run) -> Any:
    """The starting model: built or found before the stages (:mod:`rlhf_lab.run.builders.base`)."""
    raise AssertionError("the starting model is given to the resolver, never built by it")
