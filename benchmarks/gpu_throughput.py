"""Tokens/s and MFU of a model for N steps on one GPU, through train.py's own module and trainer.

    python benchmarks/gpu_throughput.py [model=137m] [data.seq_len=2048] [data.micro_batch_size=16] [compile=true]

Peak FLOPs come from Lightning's table of devices (bf16 dense); the first 10 steps are warm-up.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from _common import config
from lightning.fabric.utilities.throughput import get_available_flops

from kinject.experiment import prepare
from train import build_module, build_trainer

WARMUP = 10


class StepTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no GPU here: run this on a machine with one")
    steps = 100
    cfg = config("model=137m", "trainer=gpu", "data.seq_len=2048", "data.batch_size=16", "data.micro_batch_size=16",
                 f"tokens={(steps + WARMUP) * 16 * 2048}", "eval.every_n_steps=0", "checkpoint_every_n_steps=1000000",
                 "trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false", "knowledge.num_facts=1000",
                 "infusion.freq=10")
    experiment = prepare(cfg)
    module = build_module(cfg, experiment)
    timer = StepTimer()
    build_trainer(cfg, experiment, [], [timer]).fit(module, datamodule=experiment.datamodule)
    budget = experiment.budget
    elapsed = timer.times[-1] - timer.times[WARMUP - 1]
    measured = len(timer.times) - WARMUP
    tokens_per_s = measured * budget.batch_size * budget.seq_len / elapsed
    flops_per_token = module.flops_per_batch / (budget.micro_batch_size * budget.seq_len)
    peak = get_available_flops(torch.device("cuda"), torch.bfloat16)
    print(f"{torch.cuda.get_device_name()} | model {cfg.model.name} | seq {budget.seq_len} | batch {budget.batch_size} "
          f"| precision {cfg.trainer.precision} | compile {cfg.compile}")
    print(f"tokens/s: {tokens_per_s:,.0f}")
    print(f"MFU: {100 * tokens_per_s * flops_per_token / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
