"""Loggers from config, with W&B online checked before training: no key or no route falls back to
offline at once (online with a key but no network would otherwise hang for 90 s or more)."""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
from pathlib import Path
from typing import Any
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
            spec = OmegaConf.merge({"id": wandb_run_id(cfg.paths.output_dir), "resume": "allow"}, spec)
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
