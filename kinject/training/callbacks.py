"""Callbacks: evaluation during training, the last checkpoint, tokens/s on the progress bar, config in
checkpoints."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from kinject.evaluation.scoring import Evaluation, Evaluator
from kinject.fingerprint import fingerprint
from kinject.training.distributed import OncePerStep, decides

log = logging.getLogger("kinject")


class TrainingEvaluation(L.Callback):
    """Evaluates inside `fit`, on the training device under the run's precision: before the first step unless
    `at_start` is off (what the model knew before any infusion: for a run from a checkpoint, the baseline of every
    later number), every N
    optimizer steps (the learning curve) and after the last step (the run's result). Every rank takes part (each
    scores a slice), so it is right under DDP and FSDP alike; the curve and the result survive a resume, which
    does not evaluate its first step again."""

    def __init__(self, evaluator: Evaluator, every_n_steps: int, tokens_per_step: int, at_start: bool = True) -> None:
        self.evaluator = evaluator
        self.every_n_steps = every_n_steps
        self.at_start = at_start
        self.tokens_per_step = tokens_per_step
        self.curve: list[dict[str, float]] = []
        self.final: Evaluation | None = None
        self.once = OncePerStep()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.once.start(trainer.global_step)
        if self.at_start and trainer.global_step == 0:
            self._on_curve(trainer, self._evaluate(trainer, pl_module, 0), 0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        periodic = bool(self.every_n_steps) and step % self.every_n_steps == 0
        last = step >= trainer.max_steps
        if not (periodic or last) or not self.once.new_step(step):
            return
        evaluation = self._evaluate(trainer, pl_module, step)
        if periodic:
            self._on_curve(trainer, evaluation, step)
        if last:
            self.final = evaluation

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> Evaluation:
        started = time.perf_counter()
        evaluation = self.evaluator(pl_module.model, trainer.precision_plugin.forward_context())
        if trainer.is_global_zero:
            log.info(
                "evaluation at step %d took %.1f s on %d rank(s)",
                step,
                time.perf_counter() - started,
                trainer.world_size,
            )
        return evaluation

    def _on_curve(self, trainer: L.Trainer, evaluation: Evaluation, step: int) -> None:
        self.curve.append({"step": step, "tokens": step * self.tokens_per_step, **evaluation.metrics})
        for logger in trainer.loggers:
            logger.log_metrics(evaluation.metrics, step=step)

    def state_dict(self) -> dict[str, Any]:
        final = None if self.final is None else {"metrics": self.final.metrics, "items": self.final.items}
        return {"curve": self.curve, "final": final}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = list(state_dict["curve"])
        final = state_dict.get("final")
        self.final = None if final is None else Evaluation(final["metrics"], final["items"])


class LastCheckpoint(L.Callback):
    """Keeps `last.ckpt`: every N optimizer steps, or every M minutes of training (rank 0's clock decides
    for all ranks), and once more when training ends, still inside `fit` so that a sharded strategy saves
    while it is live."""

    def __init__(
        self,
        path: str | Path,
        every_n_steps: int | None = None,
        every_minutes: float | None = None,
        decide_every: int = 1,
    ) -> None:
        """`decide_every`: across ranks, whether `every_minutes` have passed is decided once every that many steps."""
        if (every_n_steps is None) == (every_minutes is None):
            raise ValueError("give exactly one of every_n_steps and every_minutes")
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.every_s = None if every_minutes is None else 60 * every_minutes
        self.decide_every = decide_every
        self.saved_step = -1
        self.saved_at = time.monotonic()
        self.once = OncePerStep()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.saved_at = time.monotonic()
        self.once.start(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if not self.once.new_step(step):
            return
        if self.every_n_steps is not None:
            due = step % self.every_n_steps == 0
        else:
            assert self.every_s is not None  # __init__ sets exactly one of every_n_steps and every_s
            due = decides(trainer, step, self.decide_every) and trainer.strategy.broadcast(
                time.monotonic() - self.saved_at >= self.every_s
            )
        if due:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.saved_step != trainer.global_step:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        self.saved_step = trainer.global_step
        self.saved_at = time.monotonic()


class TokensPerSecond(L.Callback):
    """Training throughput on the progress bar (MFUMonitor logs it, with MFU, to the loggers)."""

    def __init__(self, tokens_per_batch: int) -> None:
        self.tokens_per_batch = tokens_per_batch
        self.start = 0.0
        self.batches = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()
        self.batches = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.batches += 1
        elapsed = time.perf_counter() - self.start
        if elapsed > 0:
            pl_module.log("tokens_per_s", self.batches * self.tokens_per_batch / elapsed, prog_bar=True, logger=False)


class ConfigInCheckpoint(L.Callback):
    """Stores the run's resolved config and its fingerprint in every checkpoint, so evaluate.py needs nothing
    else and a folder's checkpoint is only ever resumed by the same settings."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["kinject_config"] = self.config
        checkpoint["kinject_fingerprint"] = fingerprint(self.config)


class StepProgressBar(TQDMProgressBar):
    """A progress bar that knows the run's length: the stream is endless, the step budget is not."""

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps * self.trainer.accumulate_grad_batches
