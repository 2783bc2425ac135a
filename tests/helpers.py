"""Test-only Lightning callbacks, passed to train.py as `+callbacks.NAME._target_=tests.helpers.X`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L


class RecordIndices(L.Callback):
    """Writes, per rank, the global sequence indices each optimizer step consumed."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.seen.setdefault(trainer.global_step, []).extend(batch["index"].tolist())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


class RecordSaves(L.Callback):
    """Appends the step of every checkpoint saved to a file, one line each."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        with self.path.open("a") as out:
            out.write(f"{trainer.global_step}\n")


class CrashAt(L.Callback):
    """Raises once training reaches `step`, as a crash would (a subprocess test's stand-in for a kill)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class MarkStep(L.Callback):
    """Creates the file `path` once training has reached `step` (a subprocess test waits for it, then signals)."""

    def __init__(self, path: str, step: int) -> None:
        self.path = Path(path)
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step and not self.path.exists():
            self.path.touch()


class RecordFirstStep(L.Callback):
    """Appends, on rank 0, the step each `fit` starts at (a resumed run: its checkpoint's step) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            with self.path.open("a") as out:
                out.write(f"{trainer.global_step}\n")


class DieMidShardedSave(L.Callback):
    """Ends rank `rank` at once (os._exit, like SIGKILL or a failed node) as soon as it has written its shards of
    the sharded checkpoint of step `step`, before the save is complete; Lightning's launcher then kills the others."""

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step = step
        self.rank = rank

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from torch.distributed.checkpoint.filesystem import _FileSystemWriter

        write = _FileSystemWriter.write_data

        def write_then_die(writer: Any, plan: Any, planner: Any) -> Any:
            written = write(writer, plan, planner)
            if trainer.global_step == self.step and trainer.global_rank == self.rank:
                written.wait()
                os._exit(1)
            return written

        _FileSystemWriter.write_data = write_then_die  # type: ignore[method-assign]
