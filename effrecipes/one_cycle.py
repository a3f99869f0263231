"""The one-cycle schedule whose cycle follows the FLOP budget's moving horizon."""
from __future__ import annotations

from typing import Any, Callable

import torch


class ElasticOneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """torch's one-cycle schedule whose total step count follows a moving horizon.

    Before each lr is computed the phase boundaries are placed at `pct_start` and the end of
    `horizon()` (the budget's projected total batches), so the cycle ends where the run ends even
    when steps get cheaper or dearer; with a fixed horizon it is exactly `OneCycleLR`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, horizon: Callable[[], int],
                 pct_start: float, **kwargs: Any) -> None:
        self._horizon = horizon
        self._pct_start = pct_start
        super().__init__(optimizer, total_steps=max(int(horizon()), 1), pct_start=pct_start, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        """torch's state without the horizon function (a checkpoint holds data, not code)."""
        return {k: v for k, v in super().state_dict().items() if k != "_horizon"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "_horizon"})

    def get_lr(self) -> list[float]:
        total = max(int(self._horizon()), self.last_epoch, 1)
        if total != self.total_steps:
            self.total_steps = total
            self._schedule_phases[0]["end_step"] = float(self._pct_start * total) - 1
            self._schedule_phases[-1]["end_step"] = float(total) - 1
        return super().get_lr()
