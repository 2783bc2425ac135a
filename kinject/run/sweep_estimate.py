"""A Hydra callback that says, before any job starts, what a run or sweep is about to do when it would surprise:
on a machine without a GPU, how long a local sweep's training takes as a whole (each job also warns for itself,
but only once it starts); and on the embedded world, that a model of 100M parameters or more only demonstrates
the pipeline at that size (1M tokens of a synthetic corpus teach such a model little), with the settings of the
study itself.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, cast

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kinject.budget import Budget
from kinject.errors import ConfigError
from kinject.plan import compose_job, jobs
from kinject.training.distributed import local_launcher
from kinject.training.model import ModelSpec, build, count_params, flops_per_token
from kinject.training.throughput import CPU_FLOPS_PER_THREAD, CPU_WARN_AFTER_S, duration, training_seconds

log = logging.getLogger("kinject")

DEMONSTRATION_PARAMS = 100e6


class SweepEstimate(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        warning = demonstration([config])
        if warning:
            log.warning(warning)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Only a grid (Hydra's basic sweeper) is known in advance; an Optuna study asks for its jobs one by one.
        What this raises, Hydra turns into a warning: the sweep goes on."""
        if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return
        overrides = cast(list[str], OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        configs = [compose_job(job) for job in jobs(overrides)]
        if local_launcher(config.hydra.launcher) and not torch.cuda.is_available():
            seconds, line = cpu_sweep(configs, int(config.hydra.launcher.get("n_jobs") or 1))
            log.log(logging.WARNING if seconds > CPU_WARN_AFTER_S else logging.INFO, line)
        warning = demonstration(configs)
        if warning:
            log.warning(warning)


def cpu_sweep(configs: list[DictConfig], parallel: int) -> tuple[float, str]:
    """The training time of a local sweep on this CPU, `parallel` jobs at a time (evaluation not counted), and the
    line that says it, with the time per model."""
    cores = os.cpu_count() or 1
    parallel = cores if parallel < 1 else parallel
    per_model: dict[str, list[float]] = {}
    flops, threads = 0.0, 1
    refused = 0
    for cfg in configs:
        try:
            spec, vocab, budget = _sizes(cfg)
        except ConfigError:
            refused += 1
            continue
        threads = int(cfg.threads) or torch.get_num_threads()
        job = _flops_per_token(spec, vocab, budget.seq_len) * budget.tokens_trained
        flops += job
        per_model.setdefault(spec.name, []).append(training_seconds(job, 1, CPU_FLOPS_PER_THREAD * threads))
    in_use = min(cores, parallel * threads)
    seconds = training_seconds(flops, 1, CPU_FLOPS_PER_THREAD * in_use)
    models = ", ".join(f"{name} {len(times)} x {duration(max(times))}" for name, times in per_model.items())
    line = (
        f"{len(configs) - refused} jobs, about {duration(seconds)} of training on this CPU ({in_use} thread(s) at "
        f"an estimated {CPU_FLOPS_PER_THREAD / 1e9:.0f} GFLOP/s each, evaluation not counted): {models}"
        + (f"; {refused} job(s) not counted (refused)" if refused else "")
    )
    if seconds > CPU_WARN_AFTER_S:
        line += ". Make them small with model=tiny (or xs, small), or sweep on GPUs: hydra/launcher=slurm"
    return seconds, line


def demonstration(configs: list[DictConfig]) -> str | None:
    """What to say when models of `DEMONSTRATION_PARAMS` or more train on the embedded world (data=synthetic)."""
    large: dict[str, Budget] = {}
    for cfg in configs:
        if OmegaConf.select(cfg, "data.source") != "synthetic":
            continue
        try:
            spec, vocab, budget = _sizes(cfg)
        except ConfigError:
            continue
        if _params(spec, vocab) >= DEMONSTRATION_PARAMS:
            large.setdefault(spec.name, budget)
    if not large:
        return None
    budget = next(iter(large.values()))
    return (
        f"model={','.join(large)} on the embedded world (data=synthetic, {budget.tokens_trained / 1e6:.1f}M tokens "
        f"at sequence length {budget.seq_len}): a demonstration of the pipeline at that size, whose scores say little "
        "about knowledge infusion at that scale. For the study: experiment=paper (its cost first: kinject-plan "
        "experiment=paper), or a corpus of your own with data=local data.files='...'"
    )


def _sizes(cfg: DictConfig) -> tuple[ModelSpec, int, Budget]:
    """The model, its vocabulary (the tokenizer's cap when the tokenizer decides it) and the budget of a job."""
    spec = ModelSpec.from_config(cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True)))
    vocab = spec.vocab_size or int(cfg.data.tokenizer.vocab_size)
    return spec, vocab, Budget.from_config(cfg)


@functools.cache
def _flops_per_token(spec: ModelSpec, vocab: int, seq_len: int) -> float:
    return flops_per_token(spec, vocab, seq_len)


@functools.cache
def _params(spec: ModelSpec, vocab: int) -> int:
    return count_params(build(spec, vocab, device="meta"))[0]
