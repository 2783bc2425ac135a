"""Which devices a run gets: a GPU no other kinject run on this machine holds, and a GPU trainer refused where
there is none. (`trainer=auto`, the default, is `trainer=gpu` where CUDA is available and `trainer=cpu` elsewhere,
value for value, through the resolvers of `kinject.machine`.)
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig

from kinject.errors import ConfigError
from kinject.training.distributed import local_multirun

LOCKS_ENV = "KINJECT_GPU_LOCKS"

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


def lock_folder() -> Path:
    """The GPU locks of this machine: `$KINJECT_GPU_LOCKS`, else one folder per user in /tmp (not `$TMPDIR`, which
    is often set per job or per session, and would hide the runs of one from another)."""
    return Path(os.environ.get(LOCKS_ENV) or f"/tmp/kinject-gpus-{os.getuid()}")


def gpu_names(count: int) -> list[str]:
    """A name per visible GPU that is the same in every process of the machine: its entry of
    CUDA_VISIBLE_DEVICES (an index or a UUID) where that is set, else its index."""
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    return [re.sub(r"[^\w.-]", "_", visible[i] if i < len(visible) else str(i)) for i in range(count)]


@contextmanager
def free_gpu(count: int, folder: Path | None = None, poll_s: float = 1.0) -> Iterator[int]:
    """Holds one of the `count` visible GPUs that no other process holds a lock on in `folder` (this machine's,
    `lock_folder()`, by default), for as long as the block runs, and yields its index; waits while all are
    taken. A lock dies with its process, so a killed run frees its GPU."""
    folder = lock_folder() if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    names = gpu_names(count)
    waited = False
    while True:
        for index, name in enumerate(names):
            lock = FileLock(folder / f"gpu-{name}.lock")
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
            log.info("all %d GPUs are held by other kinject runs (locks in %s): waiting for one", count, folder)
            waited = True
        time.sleep(poll_s)


@contextmanager
def job_devices(cfg: DictConfig) -> Iterator[list[int] | None]:
    """The GPU of a one-GPU run on a machine with several (`trainer.devices` for Lightning): one that no other
    kinject run of this machine holds, a job of a local multirun or a single run alike, so that two sweeps, or a
    sweep and a run, never share one. None where Lightning's own choice is right: the CPU, one GPU here, several
    devices per run, and a single run under SLURM (which gives each job its GPUs in CUDA_VISIBLE_DEVICES)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    single = cfg.trainer.get("devices", 1) in (1, "1") and int(cfg.trainer.get("num_nodes", 1)) == 1
    slurm = SLURMEnvironment.detect() and not local_multirun()
    if str(cfg.trainer.get("accelerator")) not in ("gpu", "cuda") or count < 2 or not single or slurm:
        yield None
        return
    with free_gpu(count) as index:
        log.info("this run trains on GPU %d of %d", index, count)
        yield [index]
