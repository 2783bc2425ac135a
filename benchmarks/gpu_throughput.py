"""Tokens/s and MFU of a model on one GPU, through train.py's own module and trainer.

    python benchmarks/gpu_throughput.py [model=137m] [data.micro_batch_size=8] [compile=true]

Time is taken per optimizer step (a step is `accumulation` micro-batches and trains the whole batch
of `data.batch_size` sequences); the first WARMUP steps are left out. MFU is against the dense bf16
peak of the GPU model (kinject.throughput), not Lightning's table.
"""

from __future__ import annotations

import torch
from _common import config

from kinject.cli.train import build_module, build_trainer
from kinject.run.experiment import prepare
from kinject.training.throughput import OptimizerStepTimer, mfu, peak_flops

WARMUP = 10
STEPS = 60


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no GPU here: run this on a machine with one")
    name = torch.cuda.get_device_name()
    peak = peak_flops(name)
    if peak is None:
        raise SystemExit(f"no dense bf16 peak known for {name!r}: add it to kinject.throughput.DENSE_BF16_FLOPS")
    cfg = config(
        "model=137m",
        "trainer=gpu",
        "data.seq_len=2048",
        "data.batch_size=32",
        "data.micro_batch_size=16",
        f"tokens={(STEPS + WARMUP) * 32 * 2048}",
        "eval.every_n_steps=0",
        "eval.background_facts=0",
        "eval.heldout_sequences=0",
        "trainer.checkpoint.every_n_steps=1000000",
        "trainer.enable_progress_bar=false",
        "knowledge.num_facts=1000",
        "infusion.freq=10",
    )
    experiment = prepare(cfg)
    module = build_module(cfg, experiment)
    timer = OptimizerStepTimer()
    build_trainer(cfg, experiment, [], [timer]).fit(module, datamodule=experiment.datamodule)
    budget = experiment.budget
    tokens_per_s = timer.tokens_per_s(budget.tokens_per_step, WARMUP)
    flops_per_token = module.flops_per_batch / (budget.micro_batch_size * budget.seq_len)
    print(
        f"{name} | model {cfg.model.name} | seq {budget.seq_len} | batch {budget.batch_size} "
        f"(micro {budget.micro_batch_size}, accumulation {budget.accumulation}) | precision {cfg.trainer.precision} "
        f"| compile {cfg.compile}"
    )
    print(f"tokens/s: {tokens_per_s:,.0f}")
    print(f"MFU: {100 * mfu(tokens_per_s, flops_per_token, peak):.1f}% of {peak / 1e12:.0f} TFLOP/s (dense bf16)")


if __name__ == "__main__":
    main()
