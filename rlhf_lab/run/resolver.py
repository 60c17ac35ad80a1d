"""The resolver: each artifact built once, after the artifacts it needs, as pytest builds fixtures.

A builder is a function ``builder(run, <input>, ...)``: its first parameter is the run's context
(:class:`rlhf_lab.run.context.RunContext`), and every other parameter names an artifact it is built
from. That signature is the only place a stage's inputs are declared: :func:`route` derives the order of
a run from it before any work, and :class:`Resolver` passes the built artifacts by those names.
"""

from __future__ import annotations

import inspect
import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from rlhf_lab.errors import RlhfLabError

log = logging.getLogger(__name__)


def inputs_of(builder: Callable) -> tuple[str, ...]:
    """The artifacts ``builder`` is built from: its parameters after the run context."""
    return tuple(inspect.signature(builder).parameters)[1:]


def _unknown(name: str, builders: Mapping[str, Callable], wanted_by: str = "") -> RlhfLabError:
    by = f" (an input of '{wanted_by}')" if wanted_by else ""
    return RlhfLabError(f"no stage builds '{name}'{by}; the stages of this run are: {', '.join(sorted(builders))}")


def route(builders: Mapping[str, Callable], targets: list[str]) -> tuple[str, ...]:
    """Every artifact needed for ``targets``, each after the artifacts it is built from.

    :param builders: artifact name -> its builder.
    :raises RlhfLabError: for a name no builder makes (listing the known ones), or a cycle.
    """
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in chain:
            raise RlhfLabError(f"the stages need each other in a cycle: {' -> '.join(chain + (name,))}")
        if name not in builders:
            raise _unknown(name, builders, chain[-1] if chain else "")
        for needed in inputs_of(builders[name]):
            visit(needed, chain + (name,))
        order.append(name)

    for target in targets:
        visit(target, ())
    return tuple(order)


@contextmanager
def timed(timings: dict, stage: str) -> Iterator[None]:
    """Record the wall time of ``stage`` as ``time/<stage>_seconds`` (cached stages take ~0 s)."""
    start = time.perf_counter()
    yield
    timings[f"time/{stage}_seconds"] = round(time.perf_counter() - start, 2)
    log.info("%s: %.1f s", stage, timings[f"time/{stage}_seconds"])


class Resolver:
    """Builds artifacts by name, once per run, each timed on its own.

    :param run: the run context handed to every builder.
    :param builders: artifact name -> builder (the plan's choice).
    :param given: artifacts already built (the starting model, which the pre-flight reads).
    :param timings: where ``time/<name>_seconds`` go.
    """

    def __init__(self, run: Any, builders: Mapping[str, Callable], given: Mapping[str, Any], timings: dict) -> None:
        self.run, self.builders, self.timings = run, dict(builders), timings
        self.built: dict[str, Any] = dict(given)

    def get(self, name: str) -> Any:
        """The artifact ``name``, built (after its inputs) if this run has not built it yet."""
        if name not in self.built:
            if name not in self.builders:
                raise _unknown(name, self.builders)
            builder = self.builders[name]
            inputs = {needed: self.get(needed) for needed in inputs_of(builder)}
            with timed(self.timings, name):
                self.built[name] = builder(self.run, **inputs)
        return self.built[name]

    def built_artifact(self, name: str) -> Any:
        """The artifact ``name`` if this run built (or was given) it, else None; builds nothing."""
        return self.built.get(name)
