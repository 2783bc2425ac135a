"""Test-only Lightning callbacks, passed to train.py as `+callbacks.NAME._target_=tests.helpers.X`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class RecordIndices(L.Callback):
    """Writes, per rank, the global sequence indices each optimizer step consumed."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.seen: dict[int, list[int]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.seen.setdefault(trainer.global_step, []).extend(batch["index"].tolist())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))
