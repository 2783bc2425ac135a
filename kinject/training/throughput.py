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
from lightning.fabric.utilities.throughput import Throughput

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
        f"model {model} on the CPU: training alone should take about {duration(seconds)} ({tokens / 1e6:,.1f}M "
        f"tokens x {flops_per_token / 1e9:.3g} GFLOPs/token at an estimated {rate / 1e9:.0f} GFLOP/s on {threads} "
        "thread(s)). Make it small with model=tiny (or xs, small), or move it: trainer=gpu on a machine with a "
        "GPU, hydra/launcher=slurm for a cluster"
    )


def duration(seconds: float) -> str:
    """A time span as people read it: seconds, minutes, hours or days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
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


def logging_step(trainer: L.Trainer, step: int) -> bool:
    """A step whose progress is measured and logged: every `trainer.log_every_n_steps` optimizer steps."""
    return step % trainer.log_every_n_steps == 0  # type: ignore[attr-defined]  # set by Lightning's logger connector


class MFUMonitor(L.Callback):
    """Tokens/s, FLOPs/s and MFU to the loggers (Lightning's `Throughput` metrics under `train/`), measured on rank 0
    once every `trainer.log_every_n_steps` optimizer steps: one CUDA sync there, where Lightning's ThroughputMonitor
    syncs on every micro-batch. A measurement spans the optimizer steps since the one before (every micro-batch of
    each global batch), less what runs between a measured step and the next micro-batch (evaluation, checkpoints,
    logging). The first interval is left out (compilation, warm-up); MFU against the dense bf16 peaks above, for
    bf16 runs on a GPU it knows. `latest` holds the last figures (`ProgressLog` prints them)."""

    def __init__(self, tokens_per_step: int, sequences_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.sequences_per_step = sequences_per_step
        self.throughput = Throughput(window_size=2)
        self.latest: dict[str, float] = {}
        self.once = OncePerStep()
        self.measured = 0.0
        self.started: float | None = None
        self.first_step: int | None = None
        self.last_step = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        peak = None
        device = trainer.strategy.root_device
        if device.type == "cuda" and str(trainer.precision).startswith("bf16"):
            name = torch.cuda.get_device_name(device)
            peak = peak_flops(name)
            if peak is None:
                log.warning("no dense bf16 peak known for %s: MFU is not logged (add it to kinject.throughput)", name)
        self.throughput = Throughput(available_flops=peak, world_size=trainer.world_size, window_size=2)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.once.start(trainer.global_step)
        self.throughput.reset()
        self.latest = {}
        self.started = None
        self.first_step = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or not logging_step(trainer, step) or not self.once.new_step(step):
            return
        device = trainer.strategy.root_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        assert self.started is not None  # set by on_train_batch_start of this micro-batch at the latest
        interval = time.perf_counter() - self.started
        self.started = None
        if self.first_step is None:
            self.first_step, self.measured = step, 0.0
        else:
            self.measured += interval
        self._update(trainer, pl_module, step)

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        assert self.first_step is not None
        steps, world = step - self.first_step, trainer.world_size
        per_batch = getattr(pl_module, "flops_per_batch", None)  # one micro-batch on one device
        self.throughput.update(
            time=self.measured,
            batches=steps,
            samples=steps * self.sequences_per_step // world,
            lengths=steps * self.tokens_per_step // world,
            flops=None if per_batch is None else per_batch * trainer.accumulate_grad_batches * (step - self.last_step),
        )
        self.last_step = step
        if not steps:
            return
        metrics = {f"train/{key}": value for key, value in self.throughput.compute().items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.latest = {"tokens_per_s": metrics["train/device/items_per_sec"] * world}
        if "train/device/mfu" in metrics:
            self.latest["mfu"] = metrics["train/device/mfu"]
