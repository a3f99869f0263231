"""Composer's event engine without the cost of its debug logging when debugging is off.

Composer's `Engine._debug_log` formats a timestamp string (epoch, batch, eval batch, event name:
Time and StringEnum work in Python) before it checks `$ENGINE_DEBUG`, and it is called once per
event and once more per callback and algorithm: five calls per event with effrecipes' four
callbacks, thirteen events per training batch. On a tiny model's GPU step (about a millisecond)
that is Python work the accelerator waits for. `LeanEngine` checks `$ENGINE_DEBUG` first and
otherwise behaves exactly like Composer's engine (with ENGINE_DEBUG set it logs what Composer
logs). Its effect is measured by `benchmarks/profile_overhead.py` (micro table: both engines on
the same Trainer, one `_debug_log` call and one `run_event`).
"""
from __future__ import annotations

import os
from typing import Any

from composer.core.engine import Engine


class LeanEngine(Engine):
    """Composer's `Engine`, debug logging formatted only when `$ENGINE_DEBUG` asks for it."""

    def _debug_log(self, event: Any, msg: str) -> None:
        if os.environ.get("ENGINE_DEBUG", None):
            super()._debug_log(event, msg)


def make_lean(trainer: Any) -> None:
    """Switch a built Trainer's engine to `LeanEngine` (same object and state, one method
    changed), unless it already is one or is not Composer's engine class."""
    if type(trainer.engine) is Engine:
        trainer.engine.__class__ = LeanEngine


__all__ = ["LeanEngine", "make_lean"]
