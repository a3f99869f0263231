"""Weights & Biases logging through Composer's `WandBLogger`, never fatal.

`mode: auto` logs online when an API key is configured and offline otherwise (said once, with the
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

log = logging.getLogger(__name__)


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    try:
        with open(netrc) as f:
            return "api.wandb.ai" in f.read()
    except OSError:
        return False


def resolve_mode(mode: str) -> str:
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if has_api_key() else "offline"
    return mode


class SafeWandBLogger(WandBLogger):
    """Composer's WandBLogger, falling back to offline (then to nothing) instead of failing a run."""

    def init(self, state: State, logger: Logger) -> None:
        try:
            super().init(state, logger)
        except Exception as e:  # noqa: BLE001 - W&B must never take a run down
            import wandb
            if self._init_kwargs.get("mode") != "offline":
                log.warning("W&B online start failed (%s); logging offline instead", type(e).__name__)
                self._init_kwargs["mode"] = "offline"
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


def build_wandb_logger(recipe: Recipe, group: str | None = None) -> WandBLogger:
    cfg = recipe.loggers.wandb
    mode = resolve_mode(cfg.mode)
    run_dir_hint = os.path.join(recipe.output.root, recipe.run_name)
    if mode == "offline":
        print(f"W&B: no API key or network; logging offline. Upload later with: "
              f"wandb sync {os.path.join(os.getcwd(), 'wandb')}/offline-run-*")
    tags = list(dict.fromkeys([*recipe.algorithm_names, recipe.model.name, recipe.data.name, *cfg.tags]))
    init_kwargs: dict[str, Any] = {
        "mode": mode,
        "config": recipe.model_dump(mode="json"),
        "settings": {"init_timeout": 30, "silent": True},
        "notes": f"effrecipes run directory: {run_dir_hint}",
    }
    return SafeWandBLogger(project=cfg.project, entity=cfg.entity, group=group or cfg.group,
                           name=recipe.run_name, tags=tags, init_kwargs=init_kwargs)


SUMMARY_KEYS = ("test_accuracy", "best_val_accuracy", "final_val_accuracy", "flops_used", "flops_cap",
                "stop_reason", "params", "model_size_bytes", "cpu_latency_ms_per_image",
                "train_flops_per_sample", "inference_flops_per_sample", "epochs", "train_seconds",
                "samples_per_second")


def log_summary(metrics: dict[str, Any]) -> None:
    """Final metrics as the W&B run summary (never fatal)."""
    try:
        import wandb
        if wandb.run is not None:
            wandb.run.summary.update({k: metrics[k] for k in SUMMARY_KEYS if k in metrics})
    except Exception as e:  # noqa: BLE001 - W&B must never take a run down
        log.warning("W&B summary not written: %s", type(e).__name__)
