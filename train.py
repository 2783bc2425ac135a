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
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from kinject import results
from kinject.errors import ConfigError
from kinject.fingerprint import fingerprint
from kinject.run.experiment import Experiment, prepare
from kinject.run.folder import LAST, claim
from kinject.run.tracking import make_loggers
from kinject.training.callbacks import (
    ConfigInCheckpoint,
    LastCheckpoint,
    StepProgressBar,
    TokensPerSecond,
    TrainingEvaluation,
)
from kinject.training.checkpoint import AtomicCheckpointIO
from kinject.training.devices import check_devices, job_devices
from kinject.training.distributed import FSDP2Strategy, guard_local_ddp
from kinject.training.lightning_module import CausalLM
from kinject.training.model import count_params, flops_per_token
from kinject.training.preemption import Preempted, Preemption
from kinject.training.throughput import MFUMonitor, cpu_warning
from kinject.validation import check_additions, validate

log = logging.getLogger("kinject")
SPLIT_LOSSES = ("train/loss_injected", "train/loss_background")


def build_module(
    cfg: DictConfig, experiment: Experiment, flops: float | None = None, on_meta: bool = False
) -> CausalLM:
    """The LightningModule, with the FLOPs per batch that ThroughputMonitor turns into MFU (`flops` per token, counted
    here when not given). `on_meta`: the weights take no memory until sharded (FSDP2 ranks other than 0, which
    receive rank 0's)."""
    budget = experiment.budget
    module = CausalLM(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        vocab_size=experiment.vocab_size,
        **OmegaConf.to_container(cfg.optim, resolve=True),
        total_steps=budget.steps,
        on_meta=on_meta,
    )
    if cfg.compile:
        module.model.compile()
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
    options = OmegaConf.masked_copy(cfg.trainer, [key for key in cfg.trainer if key != "checkpoint"])
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
            *callbacks,
            TokensPerSecond(budget.micro_batch_size * budget.seq_len * budget.world_size),
            MFUMonitor(
                batch_size_fn=lambda batch: batch["input_ids"].size(0),
                length_fn=lambda batch: batch["input_ids"].numel(),
            ),
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
    config = OmegaConf.to_container(cfg, resolve=True)
    claim(output_dir, config, bool(cfg.overwrite))
    done = results.complete_at(output_dir) if cfg.skip_complete else None
    if done is not None:
        log.info("already complete, skipped: %s", done.path)
        return _returned(cfg, done["metrics"])
    last = LastCheckpoint(output_dir / LAST, **config["trainer"]["checkpoint"])
    with Preemption(last) as preemption, job_devices(cfg) as devices:
        return _train(cfg, config, last, preemption, devices)


def _train(
    cfg: DictConfig,
    config: dict[str, Any],
    last_checkpoint: LastCheckpoint,
    preemption: Preemption,
    devices: list[int] | None,
) -> float | tuple[float, ...]:
    """The run itself, inside the signal handling and holding its GPU (a job of a local multirun)."""
    output_dir = Path(cfg.paths.output_dir)
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    guard_local_ddp(cfg)
    check_devices(cfg)
    experiment = prepare(cfg)

    budget = experiment.budget
    flops = flops_per_token(experiment.model, experiment.vocab_size, budget.seq_len)
    if cfg.trainer.accelerator == "cpu" and rank_zero_only.rank == 0:
        warning = cpu_warning(cfg.model.name, flops, budget.tokens_trained, torch.get_num_threads())
        if warning:
            log.warning(warning)
    evaluation = TrainingEvaluation(experiment.evaluator, int(cfg.eval.every_n_steps), budget.tokens_per_step)
    last = last_checkpoint.path
    loggers = make_loggers(cfg)
    # preemption last: a signal is honoured after the step's evaluation and checkpoint
    callbacks = [evaluation, ConfigInCheckpoint(config), last_checkpoint, preemption]
    trainer = build_trainer(cfg, experiment, loggers, callbacks, devices)
    module = build_module(
        cfg, experiment, flops, on_meta=isinstance(trainer.strategy, FSDP2Strategy) and trainer.global_rank > 0
    )
    params_total, params_non_embedding = count_params(module.model)
    record = results.RunRecord.start(
        output_dir,
        run={
            "name": cfg.run_name or "default",
            "sweep": cfg.sweep,
            "seed": int(cfg.seed),
            "output_dir": str(output_dir),
        },
        model={"name": cfg.model.name, "params_total": params_total, "params_non_embedding": params_non_embedding},
        budget=experiment.budget_summary(),
        infusion=experiment.summary(),
        fingerprint=fingerprint(config),
        config=config,
    )
    _announce(experiment, record)
    outcome = "failed"
    if trainer.is_global_zero:
        record.write()
    try:
        for logger in loggers:
            logger.log_hyperparams({**config, "derived": {**record["model"], **record["budget"], **record["infusion"]}})
        trainer.fit(
            module, datamodule=experiment.datamodule, ckpt_path=str(last) if cfg.resume and last.exists() else None
        )
        final = evaluation.final
        if final is None:
            raise RuntimeError(
                f"training ended at step {trainer.global_step} of {budget.steps} without a final "
                f"evaluation; re-score the checkpoint with `python evaluate.py ckpt={last}`"
            )
        filtered = experiment.datamodule.filter_stats().as_dict()
        logged = trainer.callback_metrics
        metrics = {
            **final.metrics,
            "train/loss": float(logged.get("train/loss", float("nan"))),
            **{key: float(logged[key]) for key in SPLIT_LOSSES if key in logged},
        }
        per_relation = final.per_relation()
        record["run"]["wall_s"] = round(time.perf_counter() - started, 2)
        if trainer.is_global_zero:
            _log_final(loggers, final.metrics, per_relation, trainer.global_step)
            path = record.complete(
                metrics=metrics, per_relation=per_relation, filter=filtered, curve=evaluation.curve, items=final.items
            )
            log.info("%s | results: %s | checkpoint: %s", _headline(metrics), path, last)
        outcome = "success"
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning ends Ctrl-C with SystemExit after a graceful stop
        if trainer.is_global_zero:
            why = stop.signal_name if isinstance(stop, Preempted) else type(stop).__name__
            record.interrupt(
                trainer.global_step,
                f"{why}: stopped at step {trainer.global_step}; the same command resumes from the last checkpoint",
            )
        raise
    except Exception as error:
        if trainer.is_global_zero:
            record.fail(error)
        raise
    finally:
        _close(loggers, outcome)
    return _returned(cfg, metrics)


def _returned(cfg: DictConfig, metrics: dict[str, float]) -> float | tuple[float, ...]:
    if OmegaConf.is_list(cfg.metric):
        return tuple(metrics[key] for key in cfg.metric)
    return metrics[cfg.metric]


def _announce(experiment: Experiment, record: results.RunRecord) -> None:
    m, b, i = record["model"], record["budget"], record["infusion"]
    log.info(
        "model %s: %.2fM parameters (%.2fM non-embedding), vocab %d",
        m["name"],
        m["params_total"] / 1e6,
        m["params_non_embedding"] / 1e6,
        experiment.vocab_size,
    )
    log.info(
        "budget %d tokens = %d steps x %d sequences x %d tokens", b["tokens"], b["steps"], b["batch_size"], b["seq_len"]
    )
    log.info(
        "infusion F=%d, %d facts, %s/%s: %d injected tokens (%.2f%% of the budget)",
        i["freq"],
        i["num_facts"],
        i["format"],
        i["paraphrase"],
        i["injected_tokens"],
        100 * i["injected_share"],
    )


def _headline(metrics: dict[str, float]) -> str:
    keys = ("memorization/acc_token", "extraction/acc_token", "background/acc_token", "heldout/loss")
    return ", ".join(f"{key} = {metrics[key]:.3f}" for key in keys if key in metrics)


def _log_final(loggers: list, metrics: dict[str, float], per_relation: dict[str, dict[str, float]], step: int) -> None:
    """Final metrics (they become the W&B summary) and a per-relation accuracy table."""
    rows = [[suite, relation, acc] for suite, table in per_relation.items() for relation, acc in table.items()]
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if hasattr(logger, "log_table"):
            logger.log_table("per_relation", columns=["suite", "relation", "acc_token"], data=rows, step=step)


def _close(loggers: list, outcome: str) -> None:
    """Always finish W&B, or the next job of a multirun logs into this run."""
    for logger in loggers:
        logger.finalize(outcome)
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
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
