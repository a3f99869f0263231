"""Weights & Biases logging through Composer's `WandBLogger`, never fatal: part of a run, so it
lives beside the runner, not in `report/`.

`mode: auto` logs online when wandb's settings hold an API key (`effrecipes.wandb_mode`) and
offline otherwise (said once, with the
`wandb sync` command to upload later). If W&B cannot start online (no network), the run falls back
to offline; if it cannot start at all, the run continues without it. The API key is never written
to logs, run directories or reports.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from composer.core import State
from composer.loggers import Logger, WandBLogger

from effrecipes.recipe import Recipe
from effrecipes.rundir import SUMMARY_FIELDS
from effrecipes.wandb_mode import OFFLINE_HINT_SAID, offline_hint, resolve_mode

log = logging.getLogger(__name__)


class SafeWandBLogger(WandBLogger):
    """Composer's WandBLogger, falling back to offline (then to nothing) instead of failing a run."""

    def init(self, state: State, logger: Logger) -> None:
        try:
            super().init(state, logger)
        except Exception as e:  # noqa: BLE001 - W&B must never take a run down
            import wandb  # lazy: only on this failure path
            if self._init_kwargs.get("mode") != "offline":
                log.warning("W&B online start failed (%s); logging offline instead", type(e).__name__)
                self._init_kwargs["mode"] = "offline"
                try:  # without this, the offline run's finish() never returned (wandb 0.18.7)
                    wandb.teardown()
                except Exception:  # noqa: BLE001
                    pass
                try:
                    super().init(state, logger)
                    return
                except Exception:  # noqa: BLE001
                    pass
            log.warning("W&B could not start; this run continues without W&B logging")
            self._enabled = False
            try:
                wandb.finish()
            except Exception:  # noqa: BLE001
                pass


def build_wandb_logger(recipe: Recipe, group: str | None = None,
                       run_name: str | None = None) -> WandBLogger:
    cfg = recipe.loggers.wandb
    mode = resolve_mode(cfg.mode)
    run_name = run_name or recipe.run_name
    run_dir_hint = os.path.join(recipe.output.root, run_name)
    if mode == "offline" and not os.environ.get(OFFLINE_HINT_SAID):
        print(offline_hint([recipe]))
    tags = list(dict.fromkeys([*recipe.algorithm_names, recipe.model.name, recipe.data.name, *cfg.tags]))
    init_kwargs: dict[str, Any] = {
        "mode": mode,
        "config": recipe.model_dump(mode="json"),
        "settings": {"init_timeout": 30, "silent": True},
        "notes": f"effrecipes run directory: {run_dir_hint}",
    }
    return SafeWandBLogger(project=cfg.project, entity=cfg.entity, group=group or cfg.group,
                           name=run_name, tags=tags, init_kwargs=init_kwargs)


def log_summary(metrics: dict[str, Any]) -> None:
    """Final metrics as the W&B run summary (never fatal)."""
    try:
        import wandb  # lazy: only when W&B logs (the runner calls this only then)
        if wandb.run is not None:
            wandb.run.summary.update({k: metrics[k] for k in SUMMARY_FIELDS if k in metrics})
    except Exception as e:  # noqa: BLE001 - W&B must never take a run down
        log.warning("W&B summary not written: %s", type(e).__name__)
