"""A Hydra callback that lists every failed job of a multirun at the end, with its overrides and where it failed.

Hydra's basic sweeper runs all jobs of a batch and then raises the first failure only; the others
would go unnoticed. Failed jobs leave a results.json with status "failed", so re-running the same
sweep re-does exactly them (complete jobs are skipped). Jobs run in worker processes (joblib on GPUs,
SLURM), so each failed job appends its line to `failed_jobs.txt` in the sweep folder and the sweep's own
process prints that file when it exits.

A bad value (a ConfigError) is a line of this list and nothing more: the basic sweeper would re-raise it
into Hydra's traceback printer, so its job hands back an exit with code 2 instead (as a single run
with a bad value exits), once every job of the batch has run.
"""

from __future__ import annotations

import atexit
import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from kinject.errors import ConfigError
from kinject.training.distributed import launcher_rank

log = logging.getLogger("kinject")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
FILENAME = "failed_jobs.txt"


class FailureReport(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(config.hydra.sweep.dir) / FILENAME
        path.unlink(missing_ok=True)
        atexit.register(_report, path)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or config.hydra.mode != RunMode.MULTIRUN:
            return
        error: BaseException = job_return._return_value  # the property would print Hydra's "Error executing" line
        frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        where = f" at {frame.filename}:{frame.lineno}" if frame else ""
        message = " ".join(str(error).split())
        line = f"{' '.join(job_return.overrides or [])}: {type(error).__name__}: {message}{where}"
        log.error("job failed, the sweep goes on: %s", line)
        if launcher_rank() == 0:  # every SLURM task of a multi-GPU job runs the job
            with open(Path(config.hydra.sweep.dir) / FILENAME, "a") as handle:
                handle.write(line + "\n")
        if isinstance(error, ConfigError) and config.hydra.sweeper.get("_target_") == BASIC_SWEEPER:
            # other sweepers (Optuna) go on after a failed trial, and would not after an exit
            job_return.return_value = SystemExit(2)


def _report(path: Path) -> None:
    failures = path.read_text().splitlines() if path.is_file() else []
    if not failures:
        return
    print(
        f"\n{len(failures)} job(s) failed (a grid re-run redoes only these; an Optuna study keeps them as failed "
        f"trials; the list: {path}):"
    )
    for line in failures:
        print(f"  - {line}")
