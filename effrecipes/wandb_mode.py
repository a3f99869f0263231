"""Whether W&B runs online, decided by wandb's own settings (no Composer import: reports use it).

An API key counts when wandb itself would use one: `WANDB_API_KEY`, or a netrc entry for the
server wandb talks to (`WANDB_BASE_URL`, default api.wandb.ai; `NETRC` moves the file), exactly
as `wandb login` stores it. `WANDB_MODE` (offline, disabled, online) wins over `mode: auto`.
"""
from __future__ import annotations

import os
from typing import Any


def wandb_settings() -> Any:
    """wandb's Settings with the environment applied, as `wandb.init` would see them."""
    import wandb  # lazy: heavy, and only when W&B is asked for

    settings = wandb.Settings()
    apply_env = getattr(settings, "_apply_env_vars", None)  # wandb 0.18 (pinned by Composer)
    if apply_env is not None:
        apply_env(dict(os.environ))
    return settings


def has_api_key() -> bool:
    from wandb.sdk.lib.apikey import get_netrc_auth  # lazy: like wandb_settings()

    settings = wandb_settings()
    return bool(settings.api_key or get_netrc_auth(settings.base_url))


def resolve_mode(mode: str) -> str:
    """The recipe's `loggers.wandb.mode` (auto, online, offline) after WANDB_MODE and the key."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if has_api_key() else "offline"
    return mode


OFFLINE_HINT_SAID = "EFFRECIPES_WANDB_HINT_SAID"  # set in matrix workers: the matrix said it once


def offline_hint(recipes: list[Any]) -> str:
    """The `wandb sync` hint when any of these recipes (Recipe objects or dicts) logs to W&B
    offline, else ''."""
    def wandb_cfg(r: Any) -> dict[str, Any]:
        if isinstance(r, dict):
            return (r.get("loggers") or {}).get("wandb") or {}
        return r.loggers.wandb.model_dump()

    modes = {resolve_mode(c.get("mode", "auto")) for r in recipes if (c := wandb_cfg(r)).get("enabled")}
    if "offline" not in modes:
        return ""
    return ("W&B: no API key or network; logging offline. Upload later with: "
            f"wandb sync {os.path.join(os.getcwd(), 'wandb')}/offline-run-*")
