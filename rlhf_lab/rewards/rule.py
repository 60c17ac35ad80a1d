"""``reward=rule``: a Python function as the reward (verifiable rewards); nothing is trained.

``reward.function`` names any importable callable ``f(prompt, response, **reward.kwargs) -> float``
as ``package.module:function`` (or ``package.module.function``); :mod:`rlhf_lab.rewards.rules` has a
few built-in ones. The function is imported when the run is set up, so a wrong name fails before
any work.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from rlhf_lab.errors import RlhfLabError
from rlhf_lab.rewards.scoring import rule_score


PREFLIGHT_PROMPT, PREFLIGHT_RESPONSE = "What is two plus two?", "Two plus two is four."
"""The tiny input a rule reward is tried on when the run is set up."""


@dataclass
class RuleRewardConfig:
    """Schema of ``reward=rule``."""

    name: str = "rule"
    function: Optional[str] = None
    """Dotted path of the reward function, e.g. ``rlhf_lab.rewards.rules:word_count`` (required)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the function on every call."""


def import_callable(path: str, key: str) -> Callable[..., Any]:
    """``module:attr`` or ``module.attr`` -> the callable; errors name ``key`` and the path."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise RlhfLabError(f"{key}: '{path}' is not a dotted path like package.module:function")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise RlhfLabError(f"{key}: cannot import '{path}': {exc}") from None
    if not callable(target):
        raise RlhfLabError(f"{key}: '{path}' is not callable")
    return target


class RuleRewardComponent:
    """Builds a :class:`~rlhf_lab.rewards.function.RuleReward`; consumes no artifact."""

    consumes: tuple[str, ...] = ()
    feedback_kind = None

    def __init__(self, cfg: RuleRewardConfig) -> None:
        if not cfg.function:
            raise RlhfLabError("reward=rule needs reward.function=<package.module:function>")
        self.cfg = cfg
        self.function = import_callable(cfg.function, "reward.function")
        # A keyword the function does not take would otherwise fail at the first rollout.
        try:
            inspect.signature(self.function).bind("prompt", "response", **cfg.kwargs)
        except TypeError as exc:
            raise RlhfLabError(f"reward.kwargs {dict(cfg.kwargs)} do not fit {cfg.function}(prompt, response, ...): {exc}") from None
        except ValueError:  # a builtin without a signature: nothing to check
            pass
        # Called once before any work: a function that raises or returns no number (None, a string,
        # a tuple) is named now, not after SFT and the first rollout.
        rule_score(self.function, PREFLIGHT_PROMPT, PREFLIGHT_RESPONSE, dict(cfg.kwargs), name=cfg.function)

    def reward_function(self, inputs: dict, tokenizer, dtype: str = "float32"):
        from rlhf_lab.rewards.function import RuleReward

        return RuleReward(self.function, tokenizer, self.cfg.kwargs, name=self.cfg.function)
