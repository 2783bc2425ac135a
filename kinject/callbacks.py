"""Callbacks: memorization learning curves, tokens/s on the progress bar, config in checkpoints."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from kinject.evaluation import Evaluator


class EvaluationCurve(L.Callback):
    """Scores the model every N optimizer steps on rank 0; the curve survives a resume."""

    def __init__(self, evaluator: Evaluator, every_n_steps: int, tokens_per_step: int) -> None:
        self.evaluator = evaluator
        self.every_n_steps = every_n_steps
        self.tokens_per_step = tokens_per_step
        self.curve: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or (self.curve and self.curve[-1]["step"] == step):
            return
        if trainer.is_global_zero:
            metrics = self.evaluator(pl_module.model).metrics
            self.curve.append({"step": step, "tokens": step * self.tokens_per_step, **metrics})
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        trainer.strategy.barrier()

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = list(state_dict["curve"])


class TokensPerSecond(L.Callback):
    """Training throughput on the progress bar (ThroughputMonitor logs it, with MFU, to the loggers)."""

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
    """Stores the run's resolved config in every checkpoint, so evaluate.py needs nothing else."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["kinject_config"] = self.config


class StepProgressBar(TQDMProgressBar):
    """A progress bar that knows the run's length: the stream is endless, the step budget is not."""

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps * self.trainer.accumulate_grad_batches
