"""A user's reward function called and its answer checked: one place for the pre-flight call and every
call in a rollout, so that a failure names the function, the input and what came back."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional

from rlhf_lab.errors import RlhfLabError


def rule_score(function: Callable[..., float], prompt: str, response: str, kwargs: dict, name: Optional[str] = None) -> float:
    """``function(prompt, response, **kwargs)`` as a finite float; anything else (an exception, a
    string, None, a tuple, NaN) is an :class:`~rlhf_lab.errors.RlhfLabError` naming the function,
    the input and what came back.

    :param name: how the user named the function (``reward.function``); else its module and name.
    """
    name = name or f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', repr(function))}"
    where = f"reward.function {name} on prompt {prompt[:80]!r} and response {response[:80]!r}"
    try:
        value = function(prompt, response, **kwargs)
    except Exception as exc:  # the user's code: named, not a traceback from deep in a rollout
        raise RlhfLabError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    try:
        number = None if isinstance(value, bool) or not isinstance(value, numbers.Real) else float(value)
    except OverflowError:  # an integer past float range
        number = None
    if number is None or not math.isfinite(number):
        raise RlhfLabError(f"{where} returned {repr(value)[:80]} ({type(value).__name__}); a reward function returns a finite number")
    return number
