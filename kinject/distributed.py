"""Guards for how runs are distributed: the combinations known to break, refused up front."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from kinject.errors import ConfigError

_IN_PROCESS_LAUNCHERS = ("BasicLauncher", "JoblibLauncher")


def guard_local_ddp(cfg: DictConfig) -> None:
    """Lightning's subprocess DDP re-runs the whole command in each child: inside a local multirun every
    rank would re-run the sweep (and a sweeper would record each trial twice). One process per job
    locally; multi-device jobs of a sweep go through the SLURM launcher, where each task is one rank."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    devices = cfg.trainer.get("devices", 1)
    multi = devices not in (1, "1") or int(cfg.trainer.get("num_nodes", 1)) > 1
    if multi and launcher.endswith(_IN_PROCESS_LAUNCHERS):
        raise ConfigError("trainer.devices", "1 device per job in a local multirun", devices,
                          hint="run multi-device jobs one at a time, or sweep with hydra/launcher=slurm")
