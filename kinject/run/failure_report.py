"""A Hydra callback that lists every failed job of a multirun at the end, with its overrides and where it failed.

Hydra's basic sweeper runs all jobs of a batch and then raises the first failure only; the others
would go unnoticed. Failed jobs leave a results.json with status "failed", so re-running the same
sweep re-does exactly them (complete jobs are skipped).
"""

from __future__ import annotations

import atexit
import logging
import traceback
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("kinject")


class FailureReport(Callback):
    def __init__(self) -> None:
        self.failures: list[str] = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            _ = job_return.return_value  # raises the job's exception
        except Exception as raised:
            error = raised
        frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        where = f" at {frame.filename}:{frame.lineno}" if frame else ""
        line = f"{' '.join(job_return.overrides or [])}: {type(error).__name__}: {error}{where}"
        log.error("job failed, the sweep goes on: %s", line)
        if not self.failures:
            atexit.register(self._report)
        self.failures.append(line)

    def _report(self) -> None:
        print(
            f"\n{len(self.failures)} job(s) failed (a grid re-run redoes only these; an Optuna study "
            "keeps them as failed trials):"
        )
        for line in self.failures:
            print(f"  - {line}")
