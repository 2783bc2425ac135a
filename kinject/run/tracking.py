"""Loggers from config, with W&B online checked before training: no key or no route falls back to
offline at once (online with a key but no network would otherwise hang for 90 s or more)."""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import sys
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kinject.network import unreachable

log = logging.getLogger("kinject")


def wandb_unreachable(timeout: float = 3.0) -> str | None:
    """Why W&B cannot be used online from here, or None when it can. Reads the key where `wandb login`
    puts it rather than calling wandb.login, which would leave the process's session online."""
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not os.environ.get("WANDB_API_KEY") and not _netrc_has(urlparse(url).hostname or ""):
        return "no API key (run `wandb login` or set WANDB_API_KEY)"
    return unreachable(url, timeout)


def _netrc_has(host: str) -> bool:
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_run_id(output_dir: str | os.PathLike) -> str:
    """One W&B run per run folder: a requeued or resumed job continues its run instead of starting another."""
    return hashlib.sha256(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]


def make_loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for spec in (cfg.logger or {}).values():
        spec = OmegaConf.create(OmegaConf.to_container(spec, resolve=True))
        if str(spec._target_).endswith("WandbLogger"):
            # merged onto a dict, the result is a DictConfig
            spec = cast(
                DictConfig, OmegaConf.merge({"id": wandb_run_id(cfg.paths.output_dir), "resume": "allow"}, spec)
            )
            if not spec.get("offline", False) and (reason := wandb_unreachable()):
                log.warning(
                    "W&B online is not possible: %s. Logging offline under %s; upload later with "
                    "`wandb sync <dir>/wandb/offline-run-*`.",
                    reason,
                    spec.save_dir,
                )
                spec = OmegaConf.merge(spec, {"offline": True})
        loggers.append(instantiate(spec))
    return loggers


def log_hyperparams(loggers: list[Any], config: dict[str, Any], derived: dict[str, Any]) -> None:
    """The resolved config, with what the run derived from it (parameters, budget, infusion) under `derived`."""
    for logger in loggers:
        logger.log_hyperparams({**config, "derived": derived})


def log_final(
    loggers: list[Any], metrics: dict[str, float], per_relation: dict[str, dict[str, float]], step: int
) -> None:
    """Final metrics (they become the W&B summary) and a per-relation accuracy table."""
    rows = [[suite, relation, acc] for suite, table in per_relation.items() for relation, acc in table.items()]
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if hasattr(logger, "log_table"):
            logger.log_table("per_relation", columns=["suite", "relation", "acc_token"], data=rows, step=step)


def close_loggers(loggers: list[Any], outcome: str) -> None:
    """Always finish W&B, or the next job of a multirun logs into this run."""
    for logger in loggers:
        logger.finalize(outcome)
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()
