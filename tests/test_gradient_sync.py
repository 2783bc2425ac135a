"""FSDP2 with gradient accumulation reduces gradients once per optimizer step, not once per micro-batch (2 gloo
ranks; that the result equals one process is tests/test_distribution.py's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.distributed.fsdp import FSDPModule

from kinject.training.distributed import OncePerStep
from tests.conftest import ROOT, TINY


class CountReductions(L.Callback):
    """Counts FSDP2's gradient reduce-scatters in each optimizer step; writes them, with the number of FSDP units,
    to `path`/rank<N>.json when training ends."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.calls = 0
        self.per_step: list[int] = []
        self.once = OncePerStep()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        original = torch.distributed.reduce_scatter_single

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        torch.distributed.reduce_scatter_single = counted
        self.once.start(trainer.global_step)
        self.units = sum(isinstance(m, FSDPModule) for m in pl_module.modules())

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.once.new_step(trainer.global_step):
            self.per_step.append(self.calls)
            self.calls = 0

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        counts = {"units": self.units, "per_step": self.per_step, "accumulation": trainer.accumulate_grad_batches}
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(counts))


@pytest.mark.slow
def test_fsdp2_reduces_gradients_once_per_optimizer_step_under_accumulation(tmp_path, cache_dir):
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            *TINY,
            "trainer=fsdp_cpu",
            "data.micro_batch_size=2",
            "tokens=4096",
            "eval.every_n_steps=0",
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path / 'run'}",
            "+callbacks.count._target_=tests.test_gradient_sync.CountReductions",
            f"+callbacks.count.path={tmp_path / 'counts'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        counts = json.loads((tmp_path / "counts" / f"rank{rank}.json").read_text())
        assert counts["accumulation"] == 2 and counts["units"] == 5, counts  # 4 decoder layers and the root
        assert counts["per_step"] == [5] * 8, "one reduce-scatter per unit per step, not per micro-batch"
