"""Framework overhead: train.py's Lightning loop against a bare PyTorch loop, same model, batches and optimizer.

    python benchmarks/train_overhead.py [model=small] [tokens=...]

Both loops read the same DataLoader and do the same work per step (forward, backward, gradient
clipping, AdamW, LR schedule); evaluation, checkpoints and the progress bar are off in both.
Runs alternate and the median of three is reported.
"""

from __future__ import annotations

import statistics
import time

import lightning as L
import torch
from _common import config

from kinject.cli.train import build_module, build_trainer
from kinject.run.experiment import Experiment, prepare
from kinject.training.lightning_module import CausalLM


def fresh_module(cfg, experiment: Experiment) -> CausalLM:
    L.seed_everything(0, verbose=False)
    return build_module(cfg, experiment)


def bare_loop(cfg, experiment: Experiment) -> float:
    module = fresh_module(cfg, experiment)
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    loader = iter(experiment.datamodule.loader(0))
    start = time.perf_counter()
    for _ in range(experiment.budget.steps):
        ids = next(loader)["input_ids"]
        loss = module.model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return time.perf_counter() - start


def lightning_loop(cfg, experiment: Experiment) -> float:
    module = fresh_module(cfg, experiment)
    trainer = build_trainer(cfg, experiment, [], [])
    start = time.perf_counter()
    trainer.fit(module, datamodule=experiment.datamodule)
    return time.perf_counter() - start


def main() -> None:
    cfg = config(
        "tokens=655360",
        "eval.every_n_steps=0",
        "trainer.checkpoint.every_n_steps=1000000",
        "trainer.enable_progress_bar=false",
    )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    experiment = prepare(cfg)
    steps = experiment.budget.steps
    bare_loop(cfg, experiment)
    bare, lightning = [], []
    for _ in range(3):
        lightning.append(lightning_loop(cfg, experiment))
        bare.append(bare_loop(cfg, experiment))
    bare_s, lightning_s = statistics.median(bare), statistics.median(lightning)
    tokens = steps * experiment.budget.batch_size * experiment.budget.seq_len
    print(
        f"model {cfg.model.name}, {steps} steps of {experiment.budget.batch_size}x{experiment.budget.seq_len} tokens, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"bare PyTorch loop : {steps / bare_s:7.2f} steps/s  ({tokens / bare_s:,.0f} tokens/s)")
    print(f"train.py (Lightning): {steps / lightning_s:7.2f} steps/s")
    print(f"framework overhead: {100 * (lightning_s - bare_s) / bare_s:+.1f}%")


if __name__ == "__main__":
    main()
