"""Preemption: the signals a scheduler sends before it stops or requeues a job end the run at the end of the
current optimizer step, with `last.ckpt` saved at that step, so that the same command resumes it exactly.

SIGTERM (SLURM's preemption and `scancel`, `kill`), SIGUSR1 (`sbatch --signal=USR1@...`, Lightning's requeue
signal) and SIGUSR2 (submitit's signal before a time limit or preemption) are handled alike. Lightning's own
SIGTERM handling stops after the current micro-batch, mid-accumulation, and exits 0: ours replaces it while
the steps run. train.py records the run as interrupted with the step and the process exits with 128 + the
signal number (143 for SIGTERM), as if killed by it, so a sweep or a scheduler sees that it did not finish.

A handler that was there before (submitit's under SLURM) still decides about the requeue: rank 0 calls it as soon
as the step's checkpoint is saved, before Lightning's teardown and `wandb.finish()` spend what is left of the
signal's delay, and only once. What it raises to end the process (submitit's exit after `scontrol requeue`, or its
error when it does not requeue) is held until the run is recorded, then raised. The other ranks never call it.
Signals that come once the run is stopping (the SIGTERM with which SLURM ends a requeued job) are logged and
ignored, so that they cannot cut the record or the loggers short.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import lightning as L

from kinject.training.callbacks import LastCheckpoint
from kinject.training.distributed import OncePerStep, decides, launcher_rank

log = logging.getLogger("kinject")

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(SystemExit):
    """Ends a run on a signal; the process's exit status is 128 + the signal number."""

    def __init__(self, signum: int, step: int | None = None) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.step = step

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class Preemption(L.Callback):
    """Used as a context manager around a run (signals before or after the steps stop it at once: there is no
    step to save) and as a callback of its Trainer (during the steps, the signal is honoured once the current
    optimizer step is done, on every rank at the same step)."""

    def __init__(self, last: LastCheckpoint, signals: tuple[signal.Signals, ...] = SIGNALS, every: int = 1) -> None:
        """`every`: across ranks, whether to stop is decided once every that many steps (`decides`)."""
        self.last = last
        self.signals = signals
        self.every = every
        self.received: int | None = None
        self.arrived: list[int] = []
        self.training = False
        self.stopping = False
        self.previous: dict[int, Any] = {}
        self.rank = launcher_rank()
        self.handed_over = False
        self.held: BaseException | None = None
        self.once = OncePerStep()

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.signals}
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if isinstance(error, Preempted):
            self._hand_over()
            if self.held is not None:
                raise self.held from error

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stopping:
            log.warning("received %s while stopping: ignored", signal.Signals(signum).name)
            return
        if self.received is None:
            log.warning(
                "received %s: stopping after the current optimizer step, with last.ckpt saved at it",
                signal.Signals(signum).name,
            )
        self.received = signum
        if signum not in self.arrived:
            self.arrived.append(signum)
        if not self.training:
            self.stopping = True
            raise Preempted(signum)

    def _hand_over(self) -> None:
        """Once, on rank 0: the handler that was there before for each signal received, in order. The first thing
        one raises (submitit: SystemExit after requeueing) is held for `__exit__` and ends the hand-over."""
        if self.handed_over or self.rank != 0:
            return
        self.handed_over = True
        for signum in self.arrived:
            handler = self.previous.get(signum)
            if not callable(handler):
                continue
            try:
                handler(signum, None)
            except BaseException as error:
                self.held = error
                return

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.once.start(trainer.global_step)
        self.rank = trainer.global_rank
        self.training = True
        if self.previous:  # Lightning's connector restores ours when fit ends
            for signum in self.signals:
                signal.signal(signum, self._handle)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if not self.once.new_step(step) or step >= trainer.max_steps or not decides(trainer, step, self.every):
            return
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        if self.last.saved_step != step:
            self.last.save(trainer)
        signum = self.received or signal.SIGTERM  # another rank received it
        if signum not in self.arrived:
            self.arrived.append(signum)
        self.training = False
        self.stopping = True
        self._hand_over()
        raise Preempted(signum, step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.training = False
