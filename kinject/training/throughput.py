"""Model FLOPs utilisation: dense bf16 peaks per GPU model, throughput counted per optimizer step, and how
long training takes (a CPU job's estimate before it starts, a GPU job's hours in the plan).

Lightning's own table knows no H200 (its MFU raises or is missing there) and lists some GPUs by their
sparse peak, about twice the dense one, which would halve MFU. Peaks here are dense bf16 tensor-core
figures from the vendors' data sheets.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from kinject.training.distributed import OncePerStep

log = logging.getLogger("kinject")

# Matched in order against the lower-cased device name: the more specific name first.
DENSE_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h200 nvl", 835e12),
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("b200", 2250e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l40", 181e12),
    ("l4", 121e12),
)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by its name (`torch.cuda.get_device_name()`), or None when unknown."""
    name = device_name.lower()
    return next((flops for key, flops in DENSE_BF16_FLOPS if key in name), None)


# Training FLOP/s per CPU thread in fp32, calibrated on this project's 2-core machines, where `tiny` trains at
# 16.7k tokens/s (7.6 MFLOPs/token at seq 128) and `137m` at about 200 tokens/s (0.67 GFLOPs/token): both
# about 1.3e11 FLOP/s on 2 threads.
CPU_FLOPS_PER_THREAD = 6.5e10
CPU_WARN_AFTER_S = 600


def mfu(tokens_per_s: float, flops_per_token: float, peak: float, devices: int = 1) -> float:
    """The share of the devices' peak that the model's training FLOPs use."""
    return tokens_per_s * flops_per_token / (peak * devices)


def training_seconds(flops_per_token: float, tokens: int, flops_per_s: float) -> float:
    """Time to train `tokens` at a sustained rate (evaluation and start-up not counted)."""
    return flops_per_token * tokens / flops_per_s


def cpu_warning(model: str, flops_per_token: float, tokens: int, threads: int) -> str | None:
    """What to say before a CPU job that would train for more than `CPU_WARN_AFTER_S` seconds: the estimate and
    the three ways out (a CPU-size model, a GPU here, a cluster); None for a job that short."""
    rate = CPU_FLOPS_PER_THREAD * threads
    seconds = training_seconds(flops_per_token, tokens, rate)
    if seconds <= CPU_WARN_AFTER_S:
        return None
    return (
        f"model {model} on the CPU: training alone should take about {_duration(seconds)} ({tokens / 1e6:,.1f}M "
        f"tokens x {flops_per_token / 1e9:.3g} GFLOPs/token at an estimated {rate / 1e9:.0f} GFLOP/s on {threads} "
        "thread(s)). Make it small with model=tiny (or xs, small), or move it: trainer=gpu on a machine with a "
        "GPU, hydra/launcher=slurm for a cluster"
    )


def _duration(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class OptimizerStepTimer(L.Callback):
    """The wall-clock time at the end of each optimizer step (not of each micro-batch): with gradient
    accumulation one step is `accumulation` micro-batches, and tokens per step are the whole global batch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.once = OncePerStep()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.once.start(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not self.once.new_step(trainer.global_step):
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def tokens_per_s(self, tokens_per_step: int, warmup: int) -> float:
        """Throughput over the steps after the first `warmup` ones."""
        measured = self.times[warmup - 1 :]
        if len(measured) < 2:
            raise ValueError(f"need more than {warmup} steps to measure, got {len(self.times)}")
        return (len(measured) - 1) * tokens_per_step / (measured[-1] - measured[0])


class MFUMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor (tokens/s, FLOPs/s, MFU to the loggers) with the dense bf16 peaks above."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        device = trainer.strategy.root_device
        if device.type != "cuda" or not str(trainer.precision).startswith("bf16"):
            return
        name = torch.cuda.get_device_name(device)
        peak = peak_flops(name)
        if peak is None:
            log.warning("no dense bf16 peak known for %s: MFU is not logged (add it to kinject.throughput)", name)
        self.available_flops = peak  # type: ignore[assignment]  # Lightning types it int | None; Throughput takes float
        for throughput in self._throughputs.values():
            throughput.available_flops = peak
