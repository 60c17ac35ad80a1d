"""The hooks a plugin may implement: the manual of the plugin API.

A plugin is a module (or object) with functions marked ``@hookimpl`` (from :mod:`rlhf_lab.api`, the
only module of rlhf_lab a plugin imports) whose names match the specs below. Built-in components are
plugins too (:data:`rlhf_lab.plugin_manager.BUILTIN_PLUGINS`); third parties declare an entry point
in group ``rlhf_lab``::

    [project.entry-points.rlhf_lab]
    my_plugin = "my_package.plugin"

Hooks are always called with keyword arguments, through pluggy's hook caller (so a hook wrapper
runs as a wrapper). An implementation may accept fewer arguments than its spec names, so specs can grow
without breaking plugins. No hook stops at the first result (none is ``firstresult``): every
implementation is called, the last registered first.

Phases:

1. Registration (once, when the plugin manager is built, before Hydra composes the config):
   the ``rlhf_lab_register_*`` hooks receive a ``register(name, factory, schema)`` callable.
   ``schema`` is a dataclass: it becomes the config group option ``<group>=<name>`` in Hydra's
   ConfigStore (groups ``task``, ``feedback``, ``reward``, ``algo``), so ``algo.lr=abc`` or an
   unknown key fails before any work. The schema must have a ``name`` field defaulting to ``name``.
   ``factory`` must satisfy the kind's Protocol in :mod:`rlhf_lab.api`; its traits (``consumes``,
   ``needs_candidates``, ...) are read and checked there and then, and a missing one is refused with one
   message naming the plugin and the member.
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

    :param register: ``register(name, factory, schema)``; ``factory`` is an :class:`rlhf_lab.api.TaskFactory`:
        ``factory(cfg, seed) -> rlhf_lab.api.Task`` where ``cfg`` is an instance of ``schema`` built from ``cfg.task``.
    """


@hookspec
def rlhf_lab_register_feedback_sources(register: Register) -> None:
    """Register feedback sources: who labels candidate responses (datasets, simulated annotators, judges).

    :param register: ``register(name, factory, schema)``; ``factory`` is an
        :class:`rlhf_lab.api.FeedbackSourceFactory`: ``factory(cfg, task)`` returns an
        :class:`rlhf_lab.api.FeedbackSource`, whose ``collect(prompts, candidates, kind, seed, split)``
        returns :class:`rlhf_lab.api.PreferenceRecord` objects. ``kind`` is ``"ranking"`` or ``"rating"``,
        whichever the reward model trains on; ``split`` is ``"train"`` or ``"heldout"``. If the factory's
        trait ``needs_candidates`` is true, the run first samples ``responses_per_prompt`` candidates per
        prompt from the SFT policy, ``rounds`` times per training prompt; otherwise both lists are empty.
        An optional ``stats`` dict of counts (e.g. ``feedback/train_skipped``) joins the run's metrics.
    """


@hookspec
def rlhf_lab_register_reward_models(register: Register) -> None:
    """Register reward components: learned reward models (pairwise Bradley-Terry, pointwise) or rules.

    :param register: ``register(name, factory, schema)``; ``factory`` is an
        :class:`rlhf_lab.api.RewardComponentFactory`: its trait ``consumes`` is ``("reward_model",)`` for a
        learned model (which the run then trains with the built object as its objective, a subclass of
        :class:`rlhf_lab.api.RewardObjective`, on records of the trait ``feedback_kind``) or ``()`` for a
        rule; ``factory(cfg)`` returns an :class:`rlhf_lab.api.RewardComponent`, whose
        ``reward_function(inputs, tokenizer, dtype)`` returns the run-time :class:`rlhf_lab.api.RewardFunction`
        built from the consumed artifacts.
    """


@hookspec
def rlhf_lab_register_algorithms(register: Register) -> None:
    """Register policy-optimisation algorithms.

    :param register: ``register(name, factory, schema)``; ``factory`` is an
        :class:`rlhf_lab.api.AlgorithmFactory`: ``factory(cfg, inputs)`` receives an
        :class:`rlhf_lab.api.AlgoInputs` and returns either a ``LightningModule`` with a ``policy``
        attribute (the Hugging Face model the run trains and saves) and a ``policy_handle()`` method, or a
        policy handle when there is nothing to train (best-of-n). Its trait ``consumes`` (required) names
        what the run must build for it besides the SFT policy and the reference: ``"reward"`` (a reward
        function) and/or ``"preferences"`` (preference records); nothing else is built. A factory whose
        result trains nothing has the trait ``trains_policy = False`` (``loop.rounds`` refuses it).
    """


# --- run ------------------------------------------------------------------------------------------


@hookspec
def rlhf_lab_callbacks(cfg: Any, stage: str) -> list:
    """Extra Lightning callbacks for the ``Trainer`` of ``stage`` (``"sft"``, ``"reward_model"``, ``"policy"``;
    in a loop, ``"reward_model_round<r>"`` and ``"policy_round<r>"`` for rounds after the first).

    Called once per trained stage; every plugin's list is used (not ``firstresult``).

    :param cfg: the whole run config (an ``omegaconf.DictConfig``).
    :returns: a list of ``lightning.pytorch.Callback``.
    """


@hookspec
def rlhf_lab_loggers(cfg: Any, stage: str, run_dir: Path) -> list:
    """Extra Lightning loggers for the ``Trainer`` of ``stage``, and of the evaluation (``"eval"``), beside
    the one ``cfg.logger`` selects. Every plugin's list is used (not ``firstresult``).

    :param run_dir: the Hydra run directory of this job.
    :returns: a list of ``lightning.pytorch.loggers.Logger``.
    """


@hookspec
def rlhf_lab_run_finished(cfg: Any, metrics: dict, run_dir: Path) -> None:
    """Called after evaluation, once ``metrics.json`` is written. Every plugin's implementation is
    called; return values are ignored.

    :param metrics: the final figures, the same as ``metrics.json`` holds.
    """
