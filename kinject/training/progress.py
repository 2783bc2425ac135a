"""How far a run has got, in its log and in its results file: where the progress bar is off (no terminal: SLURM,
nohup, CI) and W&B is offline, a log would otherwise show nothing between the start and the end of training."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L

from kinject.results import RunRecord
from kinject.training.distributed import OncePerStep
from kinject.training.throughput import MFUMonitor, duration, logging_step

log = logging.getLogger("kinject")


class ProgressLog(L.Callback):
    """Every `trainer.log_every_n_steps` optimizer steps, rank 0 logs one line (step of total, tokens, loss, tokens/s,
    MFU on a GPU, ETA) and rewrites the running record's `progress` section when it has a `record` (train.py sets
    it). One host sync at that step (the loss); tokens/s and MFU are the `MFUMonitor`'s, placed before this callback.
    The ETA comes from the wall time per step since the first logged step (since the start, at the first),
    evaluation and checkpoints included."""

    def __init__(self, tokens_per_step: int, record: RunRecord | None = None) -> None:
        self.tokens_per_step = tokens_per_step
        self.record = record
        self.once = OncePerStep()
        self.monitor: MFUMonitor | None = None
        self.since: tuple[float, int] = (0.0, 0)
        self.logged = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.once.start(trainer.global_step)
        callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning's callback connector
        self.monitor = next((c for c in callbacks if isinstance(c, MFUMonitor)), None)
        self.since = (time.perf_counter(), trainer.global_step)
        self.logged = False

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or not logging_step(trainer, step) or not self.once.new_step(step):
            return
        loss = float(outputs["loss"]) if isinstance(outputs, dict) and "loss" in outputs else float("nan")
        now = time.perf_counter()
        started, first = self.since
        total = int(trainer.max_steps)
        eta_s = (now - started) / max(1, step - first) * max(0, total - step)
        if not self.logged:
            self.since, self.logged = (now, step), True
        measured = self.monitor.latest if self.monitor else {}
        parts = [
            f"step {step}/{total} ({100 * step / total:.0f}%)",
            f"{_count(step * self.tokens_per_step)} tokens",
            f"loss {loss:.4f}",
        ]
        if "tokens_per_s" in measured:
            parts.append(f"{measured['tokens_per_s']:,.0f} tokens/s")
        if "mfu" in measured:
            parts.append(f"MFU {100 * measured['mfu']:.1f}%")
        parts.append(f"ETA {duration(eta_s)}")
        log.info("%s", ", ".join(parts))
        if self.record is not None:
            self.record.progress(
                step=step, steps=total, eta_s=round(eta_s, 1), tokens_per_s=measured.get("tokens_per_s")
            )


def _count(n: float) -> str:
    """A count as people read it: 512, 20.5k, 1.05M, 2.7B."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"
