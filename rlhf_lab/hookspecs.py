"""The rlhf_lab plugin API: every hook a plugin may implement.

A plugin is a module (or object) with functions marked ``@rlhf_lab.hookimpl`` whose names match the
specs below. Built-in components are plugins too (:data:`rlhf_lab.plugin_manager.BUILTIN_PLUGINS`);
third parties declare an entry point in group ``rlhf_lab``::

    [project.entry-points.rlhf_lab]
    my_plugin = "my_package.plugin"

Hooks are always called with keyword arguments. An implementation may accept fewer arguments than
its spec names, so specs can grow without breaking plugins.

Phases:

1. Registration (once, when the plugin manager is built, before Hydra composes the config):
   the ``rlhf_lab_register_*`` hooks receive a ``register(name, factory, schema)`` callable.
   ``schema`` is a dataclass: it becomes the config group option ``<group>=<name>`` in Hydra's
   ConfigStore (groups ``task``, ``feedback``, ``reward``, ``algo``), so ``algo.lr=abc`` or an
   unknown key fails before any work. The schema must have a ``name`` field defaulting to ``name``.
2. Run (once per stage that trains): ``rlhf_lab_callbacks`` and ``rlhf_lab_loggers`` add to the
   Lightning ``Trainer`` of that stage.
3. End of run: ``rlhf_lab_run_finished`` sees the final metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("rlhf_lab")

Register = Callable[[str, Callable[..., Any], type], None]


# --- registration ---------------------------------------------------------------------------------


@hookspec
def rlhf_lab_register_tasks(register: Register) -> None:
    """Register tasks: where prompts, demonstrations and (optionally) a gold utility come from.

    :param register: ``register(name, factory, schema)``; ``factory(cfg, seed) -> rlhf_lab.tasks.base.Task``
        where ``cfg`` is an instance of ``schema`` built from ``cfg.task``.
    """


@hookspec
def rlhf_lab_register_feedback_sources(register: Register) -> None:
    """Register feedback sources: who labels candidate responses (datasets, simulated annotators, judges).

    :param register: ``register(name, factory, schema)``; ``factory(cfg, task) -> FeedbackSource``,
        an object with ``collect(prompts, candidates, kind, seed, split) -> list[PreferenceRecord]``
        (see :mod:`rlhf_lab.feedback.records`). ``kind`` is ``"ranking"`` or ``"rating"``, whichever the
        reward model trains on; ``split`` is ``"train"`` or ``"heldout"``. If the source's attribute
        ``needs_candidates`` is true, the pipeline first samples ``responses_per_prompt`` candidates per
        prompt from the SFT policy, ``rounds`` times per training prompt; otherwise both lists are empty.
        An optional ``stats`` dict of counts (e.g. ``feedback/train_skipped``) joins the run's metrics.
    """


@hookspec
def rlhf_lab_register_reward_models(register: Register) -> None:
    """Register reward components: learned reward models (pairwise Bradley-Terry, pointwise) or rules.

    :param register: ``register(name, factory, schema)``; ``factory(cfg)`` returns an object with
        ``consumes`` (a tuple: ``("reward_model",)`` for a learned model, which the pipeline then trains
        with the object as its objective, see :class:`rlhf_lab.rewards.base.RewardObjective`; ``()`` for
        a rule) and ``reward_function(inputs, tokenizer, dtype)`` returning the run-time
        :class:`~rlhf_lab.rewards.function.RewardFunction` built from the consumed artifacts.
    """


@hookspec
def rlhf_lab_register_algorithms(register: Register) -> None:
    """Register policy-optimisation algorithms.

    :param register: ``register(name, factory, schema)``; ``factory(cfg, inputs)`` receives an
        :class:`~rlhf_lab.algos.inputs.AlgoInputs` and returns either a ``LightningModule`` with a
        ``policy`` attribute (the Hugging Face model the pipeline trains and saves) and a
        ``policy_handle()`` method, or a :class:`~rlhf_lab.policy.PolicyHandle` when there is nothing
        to train (best-of-n). The factory must have an attribute ``consumes``, a tuple naming what the
        pipeline must build for it besides the SFT policy and the reference: ``"reward"`` (a reward
        function) and/or ``"preferences"`` (preference records). Nothing else is built. A factory
        whose result trains nothing sets ``trains_policy = False`` (``loop.rounds`` refuses it).
    """


# --- run ------------------------------------------------------------------------------------------


@hookspec
def rlhf_lab_callbacks(cfg: Any, stage: str) -> list:
    """Extra Lightning callbacks for the ``Trainer`` of ``stage`` (``"sft"``, ``"reward"``, ``"policy"``; in a
    loop, ``"reward_round<r>"`` and ``"policy_round<r>"`` for rounds after the first).

    Called once per trained stage; the results of all plugins are concatenated.

    :param cfg: the whole run config (an ``omegaconf.DictConfig``).
    :returns: a list of ``lightning.pytorch.Callback``.
    """


@hookspec
def rlhf_lab_loggers(cfg: Any, stage: str, run_dir: Path) -> list:
    """Extra Lightning loggers for the ``Trainer`` of ``stage``, beside the one ``cfg.logger`` selects.

    :param run_dir: the Hydra run directory of this job.
    :returns: a list of ``lightning.pytorch.loggers.Logger``.
    """


@hookspec
def rlhf_lab_run_finished(cfg: Any, metrics: dict, run_dir: Path) -> None:
    """Called after evaluation, once ``metrics.json`` is written. Return values are ignored.

    :param metrics: the final figures, the same as ``metrics.json`` holds.
    """
