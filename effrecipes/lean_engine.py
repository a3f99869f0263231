"""Composer's event engine without its per-event Python overhead when nothing needs it.

Composer's `Engine.run_event` runs 13 times per training batch. Even with no profiler, no
algorithm for the event and debug logging off, each call formats a debug timestamp string five
times (once per event and once per callback: Time and StringEnum work in Python), builds a set of
events to check two assertions (both hold whenever a dataloader and a duration are set), asks
`event.is_before_event` / `is_after_event` (string work) for profiler markers that do not exist,
and runs the algorithm passes over an empty list. Measured
on this CPU (`benchmarks/profile_overhead.py`, micro table, effrecipes' four callbacks): 54 us per
event with Composer's engine, 9 us with this one, i.e. 0.7 ms -> 0.12 ms per batch of Python work
that a tiny model's GPU step (about a millisecond) would wait for.

`LeanEngine` does the same work in the same order - Composer's assertions whenever they could
fail (a dataloader or a duration not set), algorithms matched
and run by Composer's own `_run_algorithms`, then non-logger callbacks, then loggers - and skips
only what cannot have an effect: the debug strings unless `$ENGINE_DEBUG` is set, the profiler
markers when there is no profiler, and the passes when no algorithm matched the event (Composer's
passes reorder or filter the matched list; they cannot add to an empty one; with other passes
registered they always run). With a profiler, `$ENGINE_DEBUG` or the INIT event, the event goes
through Composer's own `run_event`.
"""
from __future__ import annotations

import os
from typing import Any, Sequence, Union

from composer.core import Algorithm, Event
from composer.core import engine as composer_engine
from composer.core.engine import Engine, Traces
from composer.loggers import LoggerDestination

_DEFAULT_PASSES = frozenset(composer_engine._get_default_passes())


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
        if state.dataloader is None or state.max_duration is None:  # else Composer's checks pass
            self._assert_dataloader_and_duration_set(state, event)
        traces = self._run_algorithms(event)
        callbacks, logger = state.callbacks, self.logger
        for cb in [c for c in callbacks if not isinstance(c, LoggerDestination)]:
            cb.run_event(event, state, logger)
        for cb in [c for c in callbacks if isinstance(c, LoggerDestination)]:
            cb.run_event(event, state, logger)
        return traces

    def _compile(self, algorithms_to_run: Sequence[Algorithm], event: Event) -> Sequence[Algorithm]:
        """Composer's passes, skipped when no algorithm matched the event and the passes are
        Composer's own (they reorder or filter the matched list; they cannot add to an empty one)."""
        if not algorithms_to_run and all(p in _DEFAULT_PASSES for p in self.algorithm_passes):
            return algorithms_to_run
        return super()._compile(algorithms_to_run, event)


def make_lean(trainer: Any) -> None:
    """Switch a built Trainer's engine to `LeanEngine` (same object and state, its methods
    changed), unless it already is one or is not Composer's engine class."""
    if type(trainer.engine) is Engine:
        trainer.engine.__class__ = LeanEngine


__all__ = ["LeanEngine", "make_lean"]
