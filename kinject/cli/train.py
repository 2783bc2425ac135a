"""Pretrain a Llama-style model with knowledge spliced in at frequency F; measure and record memorization.

python train.py                                       # embedded default, about two minutes on CPU
python train.py -m infusion.freq=0,4,16,64            # a frequency sweep
python train.py model=562m infusion.freq=100 --cfg job
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from kinject import CONF_DIR, results
from kinject.errors import ConfigError
from kinject.init import load_weights
from kinject.run.experiment import Experiment, prepare
from kinject.run.folder import LAST, claim, refuse_empty_rerun
from kinject.run.record import Resumption, complete, recorded, returned, returned_from, start_record
from kinject.run.tracking import log_hyperparams, make_loggers
from kinject.training.callbacks import (
    ConfigInCheckpoint,
    LastCheckpoint,
    StepProgressBar,
    TokensPerSecond,
    TrainingEvaluation,
)
from kinject.training.checkpoint import AtomicCheckpointIO, readable
from kinject.training.devices import check_devices, job_devices
from kinject.training.distributed import FSDP2Strategy, guard_local_ddp
from kinject.training.lightning_module import CausalLM
from kinject.training.model import flops_per_token
from kinject.training.preemption import Preemption
from kinject.training.progress import ProgressLog
from kinject.training.throughput import MFUMonitor, cpu_warning
from kinject.validation import check_additions, validate

log = logging.getLogger("kinject")


def build_module(
    cfg: DictConfig,
    experiment: Experiment,
    flops: float | None = None,
    on_meta: bool = False,
    from_init: bool = True,
) -> CausalLM:
    """The LightningModule, with the FLOPs per batch that MFUMonitor turns into MFU (`flops` per token, counted
    here when not given). `on_meta`: the weights take no memory until sharded (FSDP2 ranks other than 0, which
    receive rank 0's). `from_init`: a run from a checkpoint (`model.init`) starts from its weights, read here
    (not on the meta ranks; false when resuming, whose checkpoint replaces them). Activation checkpointing is set
    here, before Lightning's `configure_model` shards."""
    budget = experiment.budget
    load = from_init and experiment.model.init is not None and not on_meta
    module = CausalLM(
        model=cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True)),  # mapping nodes give dicts
        vocab_size=experiment.vocab_size,
        **cast(dict[str, Any], OmegaConf.to_container(cfg.optim, resolve=True)),
        total_steps=budget.steps,
        on_meta=on_meta or load,
    )
    if load:
        module.model = load_weights(experiment.model, experiment.vocab_size)
    if cfg.activation_checkpointing:  # per decoder layer, on its forward: FSDP2's hooks stay outside the recompute
        module.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:  # per decoder layer, in place (same state-dict keys): FSDP2's hooks stay outside the graphs
        for layer in module.model.model.layers:
            layer.compile()
    if flops is None:
        flops = flops_per_token(experiment.model, experiment.vocab_size, budget.seq_len)
    module.flops_per_batch = budget.micro_batch_size * budget.seq_len * flops
    return module


def build_trainer(
    cfg: DictConfig,
    experiment: Experiment,
    loggers: list,
    callbacks: list[L.Callback],
    devices: list[int] | None = None,
) -> L.Trainer:
    """The Lightning Trainer of a run: budget in steps, atomic checkpoints, one owner of SLURM requeue.
    `trainer.checkpoint` configures kinject's LastCheckpoint (train.py), not the Trainer; `devices` replaces
    `trainer.devices` (the GPU a job of a local multirun holds)."""
    budget = experiment.budget
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    bar = cfg.trainer.enable_progress_bar
    bar = sys.stderr.isatty() if bar is None else bool(bar)
    extra = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    resolved = cast(dict[str, Any], OmegaConf.to_container(cfg.trainer, resolve=True))  # may refer outside it
    options = {key: value for key, value in resolved.items() if key != "checkpoint"}
    return instantiate(
        options,
        **({"devices": devices} if devices is not None else {}),
        max_steps=budget.steps,
        accumulate_grad_batches=budget.accumulation,
        logger=loggers or False,
        default_root_dir=cfg.paths.output_dir,
        plugins=plugins,
        enable_progress_bar=bar,
        callbacks=[
            MFUMonitor(budget.tokens_per_step, budget.batch_size),  # first: it measures before evaluation and saves
            *callbacks,
            TokensPerSecond(budget.micro_batch_size * budget.seq_len * budget.world_size),
            *([StepProgressBar()] if bar else []),
            *extra,
        ],
    )


def train(cfg: DictConfig) -> float | tuple[float, ...]:
    """Trains one run, writes its results file and returns `cfg.metric` (a list of keys gives a tuple)."""
    output_dir = Path(cfg.paths.output_dir)
    validate(cfg)
    if HydraConfig.initialized():
        check_additions(cfg, list(HydraConfig.get().overrides.task))
    config = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))  # the root config is a mapping
    claim(output_dir, config, bool(cfg.overwrite), bool(cfg.resume))
    done = results.complete_at(output_dir)
    if done is not None and cfg.skip_complete:
        log.info("already complete, skipped: %s", done.path)
        return returned_from(cfg, done)
    if done is not None and cfg.resume:
        refuse_empty_rerun(output_dir, done)
    every = int(cfg.trainer.log_every_n_steps)
    last = LastCheckpoint(output_dir / LAST, **config["trainer"]["checkpoint"], decide_every=every)
    with Preemption(last, every=every) as preemption, job_devices(cfg) as devices:
        return _train(cfg, config, last, preemption, devices)


def _train(
    cfg: DictConfig,
    config: dict[str, Any],
    last_checkpoint: LastCheckpoint,
    preemption: Preemption,
    devices: list[int] | None,
) -> float | tuple[float, ...]:
    """The run itself, inside the signal handling and holding its GPU (a job of a local multirun):
    build, fit, record."""
    started = time.perf_counter()
    _set_up_process(cfg)
    experiment = prepare(cfg)
    flops = flops_per_token(experiment.model, experiment.vocab_size, experiment.budget.seq_len)
    _warn_if_slow_on_cpu(cfg, experiment, flops)
    evaluation = TrainingEvaluation(
        experiment.evaluator, int(cfg.eval.every_n_steps), experiment.budget.tokens_per_step, bool(cfg.eval.at_start)
    )
    progress = ProgressLog(experiment.budget.tokens_per_step)
    resumption = Resumption()
    loggers = make_loggers(cfg)
    # preemption last: a signal is honoured after the step's evaluation and checkpoint
    callbacks = [resumption, evaluation, ConfigInCheckpoint(config), last_checkpoint, progress, preemption]
    trainer = build_trainer(cfg, experiment, loggers, callbacks, devices)
    on_meta = isinstance(trainer.strategy, FSDP2Strategy) and trainer.global_rank > 0
    resume_from = readable(last_checkpoint.path) if cfg.resume else None
    module = build_module(cfg, experiment, flops, on_meta=on_meta, from_init=resume_from is None)
    record = start_record(cfg, config, experiment, module.model)
    progress.record = resumption.record = record

    last = last_checkpoint.path
    with recorded(record, trainer, loggers, last):
        log_hyperparams(loggers, config, {**record["model"], **record["budget"], **record["infusion"]})
        trainer.fit(module, datamodule=experiment.datamodule, ckpt_path=str(resume_from) if resume_from else None)
        metrics = complete(record, trainer, experiment, evaluation, loggers, started, last, resumption)
    return returned(cfg, metrics)


def _set_up_process(cfg: DictConfig) -> None:
    """Threads, matmul precision and seed of this process; refuses device settings this machine cannot run."""
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    guard_local_ddp(cfg)
    check_devices(cfg)


def _warn_if_slow_on_cpu(cfg: DictConfig, experiment: Experiment, flops: float) -> None:
    if cfg.trainer.accelerator == "cpu" and rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # set by Lightning
        warning = cpu_warning(cfg.model.name, flops, experiment.budget.tokens_trained, torch.get_num_threads())
        if warning:
            log.warning(warning)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    try:
        return train(cfg)
    except ConfigError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        log.error("bad config, nothing was trained: %s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
