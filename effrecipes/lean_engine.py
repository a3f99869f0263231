"""Composer's event engine without its per-event Python overhead when nothing needs it.

Composer's `Engine.run_event` runs 13 times per training batch. Even with no profiler, no
algorithm for the event and debug logging off, each call formats a debug timestamp string five
times (once per event and once per callback: Time and StringEnum work in Python), builds a set of
events to check two assertions, asks `event.is_before_event` / `is_after_event` (string work) for
profiler markers that do not exist, and runs the algorithm passes over an empty list. Measured
on this CPU (`benchmarks/profile_overhead.py`, micro table, effrecipes' four callbacks): 54 us per
event with Composer's engine, 9 us with this one, i.e. 0.7 ms -> 0.12 ms per batch of Python work
that a tiny model's GPU step (about a millisecond) would wait for.

`LeanEngine` does the same work in the same order - the same assertions, algorithms matched
and run by Composer's own `_run_algorithms`, then non-logger callbacks, then loggers - and skips
only what cannot have an effect: the debug strings unless `$ENGINE_DEBUG` is set, the profiler
markers when there is no profiler, and the passes when no algorithm matched the event (Composer's
passes reorder or filter the matched list; they cannot add to an empty one). With a profiler,
`$ENGINE_DEBUG`, the INIT event or algorithm passes other than Composer's defaults it is
Composer's engine unchanged.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Union

from composer.core import Event
from composer.core import engine as composer_engine
from composer.core.engine import Engine, Traces
from composer.loggers import LoggerDestination

# Events that need no dataloader / no max_duration: Composer's `_assert_dataloader_and_duration_set`
_NO_DATALOADER = frozenset({Event.INIT, Event.BEFORE_LOAD, Event.AFTER_LOAD, Event.EVAL_STANDALONE_START,
                            Event.EVAL_STANDALONE_END})
_NO_DURATION = frozenset({Event.INIT, Event.BEFORE_LOAD, Event.AFTER_LOAD})
_checks: dict[Event, tuple[bool, bool]] = {}  # event -> (needs a dataloader, needs max_duration)


def _needs(event: Event) -> tuple[bool, bool]:
    """Which of Composer's two engine assertions apply to an event (worked out once per event)."""
    if event not in _checks:
        _checks[event] = (event not in _NO_DATALOADER,
                          event not in _NO_DURATION and not event.is_predict and not event.is_eval)
    return _checks[event]


def _default_passes() -> frozenset[Any]:
    return frozenset(composer_engine._get_default_passes())


_DEFAULT_PASSES = _default_passes()


class LeanEngine(Engine):
    """Composer's `Engine` without the debug strings, profiler checks and algorithm passes that
    cannot have an effect (module docstring); everything else is Composer's."""

    def _debug_log(self, event: Any, msg: str) -> None:
        if os.environ.get("ENGINE_DEBUG", None):
            super()._debug_log(event, msg)

    def run_event(self, event: Union[Event, str]) -> Traces:
        event = Event(event)
        state = self.state
        if state.profiler is not None or event is Event.INIT or os.environ.get("ENGINE_DEBUG", None):
            return super().run_event(event)
        if self._is_closed:
            raise RuntimeError("The engine was already closed and therefore cannot be used again. "
                               "To fix, please create a new Engine (or Trainer)")
        needs_dataloader, needs_duration = _needs(event)
        if needs_dataloader:
            assert state.dataloader is not None, f"The trainer should have set state.dataloader for event {event}."
        if needs_duration:
            assert state.max_duration is not None, f"The trainer should have set state.max_duration for event {event}."
        traces = self._run_algorithms(event)
        callbacks, logger = state.callbacks, self.logger
        for cb in [c for c in callbacks if not isinstance(c, LoggerDestination)]:
            cb.run_event(event, state, logger)
        for cb in [c for c in callbacks if isinstance(c, LoggerDestination)]:
            cb.run_event(event, state, logger)
        return traces

    def _run_algorithms(self, event: Event) -> Traces:
        """Composer's, except that an event no algorithm matches returns its empty trace at once.
        When one matches, Composer's method matches again (only EMA's `match` has side effects,
        and a second call finds them done) and runs the passes and the algorithms."""
        state = self.state
        if state.profiler is None and all(p in _DEFAULT_PASSES for p in self.algorithm_passes):
            if not any([algo.match(event, state) for algo in state.algorithms]):
                return OrderedDict()
        return super()._run_algorithms(event)


def make_lean(trainer: Any) -> None:
    """Switch a built Trainer's engine to `LeanEngine` (same object and state, its methods
    changed), unless it already is one or is not Composer's engine class."""
    if type(trainer.engine) is Engine:
        trainer.engine.__class__ = LeanEngine


__all__ = ["LeanEngine", "make_lean"]
