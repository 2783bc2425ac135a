"""Which devices a run gets: one GPU per job in a local multirun, and a GPU trainer refused where there is
none. (`trainer=auto`, the default, is `trainer=gpu` where CUDA is available and `trainer=cpu` elsewhere,
value for value, through the resolvers of `kinject.machine`.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from kinject.errors import ConfigError
from kinject.training.distributed import local_multirun

log = logging.getLogger("kinject")


def check_devices(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without one is refused with the key and the CPU alternatives."""
    if str(cfg.trainer.get("accelerator")) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.accelerator",
            "a machine with a CUDA GPU",
            cfg.trainer.accelerator,
            hint="no GPU is visible here: use trainer=cpu, or trainer=ddp_cpu / fsdp_cpu for several CPU processes",
        )


@contextmanager
def free_gpu(folder: Path, count: int, poll_s: float = 1.0) -> Iterator[int]:
    """Holds a GPU that no other job holding a lock in `folder` uses, for as long as the block runs; waits while
    all `count` are taken. A lock dies with its process, so a killed job frees its GPU."""
    folder.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(count):
            lock = FileLock(folder / f"gpu{index}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield index
            finally:
                lock.release()
            return
        if not waited:
            log.info("all %d GPUs are taken by other jobs of this sweep: waiting for one", count)
            waited = True
        time.sleep(poll_s)


@contextmanager
def job_devices(cfg: DictConfig) -> Iterator[list[int] | None]:
    """The GPU of this job in a local multirun on a machine with several (`trainer.devices` for Lightning), or
    None where Lightning's own choice is right: a single run, the CPU, several devices per job, one GPU here.
    Jobs running side by side (`hydra/launcher=local`, one worker per GPU) each hold a different GPU."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    single = cfg.trainer.get("devices", 1) in (1, "1") and int(cfg.trainer.get("num_nodes", 1)) == 1
    if str(cfg.trainer.get("accelerator")) not in ("gpu", "cuda") or count < 2 or not single or not local_multirun():
        yield None
        return
    with free_gpu(Path(HydraConfig.get().sweep.dir) / ".gpus", count) as index:
        log.info("this job trains on GPU %d of %d", index, count)
        yield [index]
