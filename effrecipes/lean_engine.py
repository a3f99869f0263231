"""Composer's event engine without its per-event Python overhead when nothing needs it.

Composer's `Engine.run_event` runs 13 times per training batch. Even with no profiler, no
algorithm for the event and debug logging off, each call formats a debug timestamp string five
times (once per event and once per callback: Time and StringEnum work in Python), builds a set of
events to check two assertions (both hold whenever a dataloader and a duration are set), asks
`event.is_before_event` / `is_after_event` (string work) for profiler markers that do not exist,
and runs the algorithm passes over an empty list. Measured
on this CPU (`benchmarks/profile_overhead.py`, micro table, effrecipes' four callbacks): 54 us per
event with Composer's engine, 9 us with this one, i.e. 0.7 ms -> 0.12 ms per batch of Python work
that a tiny model's GPU step (about a millisecond) would wait for. Reading `$ENGINE_DEBUG` once
when the Trainer is built (an environment lookup per event cost 1-2 us) and splitting the
callbacks into non-loggers and loggers once (re-split when the list's items change) brought it to
a tenth of Composer's cost (8.1 against 82.6 us, 2026-12-01, a slower hour on this machine).

`LeanEngine` does the same work in the same order - Composer's assertions whenever they could
fail (a dataloader or a duration not set), algorithms matched
and run by Composer's own `_run_algorithms`, then non-logger callbacks, then loggers - and skips
only what cannot have an effect: the debug strings unless `$ENGINE_DEBUG` is set, the profiler
markers when there is no profiler, and the passes when no algorithm matched the event (Composer's
passes reorder or filter the matched list; they cannot add to an empty one; with other passes
registered they always run). With a profiler, `$ENGINE_DEBUG` (set when the Trainer was built)
or the INIT event, the event goes through Composer's own `run_event`.

`lean_train_data` removes one more per-batch cost that cannot have an effect: Composer's
`_train_microbatch` deep-copies every microbatch (0.26-0.35 ms a batch on the 1.5K-DW model,
benchmarks/README.md §1.0c) and reads the copy only to compute train metrics after the backward
pass. A model without train metrics (effrecipes' default) gets microbatches whose deepcopy is the
microbatch itself; one with them gets Composer's copy as before.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

from composer.core import Algorithm, DataSpec, Event
from composer.core import engine as composer_engine
from composer.core.engine import Engine, Traces
from composer.loggers import LoggerDestination

_DEFAULT_PASSES = frozenset(composer_engine._get_default_passes())


class LeanEngine(Engine):
    """Composer's `Engine` without the debug strings, profiler checks and algorithm passes that
    cannot have an effect (module docstring); everything else is Composer's."""

    # Set by `make_lean`: $ENGINE_DEBUG read once when the Trainer is built (an environment
    # lookup costs ~1-2 us, and run_event and _debug_log would each make one per event).
    _engine_debug: bool = False
    # (a copy of the callbacks list, its non-logger callbacks, its loggers): Composer's order,
    # split once instead of twice per event, and split again whenever the list's items change
    # (State's setter replaces them in place, so the list object stays the same; comparing the
    # copy is one C-level pass of identity checks).
    _callback_split: Optional[tuple[list, list, list]] = None

    def _debug_log(self, event: Any, msg: str) -> None:
        if self._engine_debug:
            super()._debug_log(event, msg)

    def run_event(self, event: Union[Event, str]) -> Traces:
        if not isinstance(event, Event):
            event = Event(event)
        state = self.state
        if state.profiler is not None or event is Event.INIT or self._engine_debug:
            return super().run_event(event)
        if self._is_closed:
            raise RuntimeError("The engine was already closed and therefore cannot be used again. "
                               "To fix, please create a new Engine (or Trainer)")
        if state.dataloader is None or state.max_duration is None:  # else Composer's checks pass
            self._assert_dataloader_and_duration_set(state, event)
        traces = self._run_algorithms(event)
        callbacks, logger = state.callbacks, self.logger
        split = self._callback_split
        if split is None or split[0] != callbacks:
            split = self._callback_split = (
                list(callbacks), [c for c in callbacks if not isinstance(c, LoggerDestination)],
                [c for c in callbacks if isinstance(c, LoggerDestination)])
        for cb in split[1]:
            cb.run_event(event, state, logger)
        for cb in split[2]:
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
        trainer.engine._engine_debug = bool(os.environ.get("ENGINE_DEBUG", None))


class UncopiedBatch(tuple):
    """A microbatch whose `deepcopy` is itself: a tuple cannot change, and the tensors it holds
    are shared. Composer copies each microbatch only for the train metrics (`lean_train_data`)."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict) -> "UncopiedBatch":
        return self


def lean_train_data(loader: Any, model: Any) -> Any:
    """What the Trainer trains from: `loader` itself when `model` (a ComposerModel) computes train
    metrics, whose update reads Composer's copy of each microbatch; otherwise a DataSpec splitting
    batches as Composer does, into `UncopiedBatch` microbatches."""
    if model.get_metrics(is_train=True):
        return loader
    split = DataSpec(loader).split_batch  # Composer's default split

    def split_uncopied(batch: Any, microbatch_size: Union[int, float]) -> list:
        return [UncopiedBatch(mb) if type(mb) is tuple else mb for mb in split(batch, microbatch_size)]

    return DataSpec(loader, split_batch=split_uncopied)


__all__ = ["LeanEngine", "UncopiedBatch", "lean_train_data", "make_lean"]
