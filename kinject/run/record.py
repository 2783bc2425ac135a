"""What a run writes about itself: its record (started before training, then complete, interrupted or
failed; rank 0 writes), the lines that announce it, and the metric it returns to a sweeper."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel

from kinject import results
from kinject.fingerprint import fingerprint
from kinject.run.experiment import Experiment
from kinject.run.tracking import close_loggers, log_final
from kinject.training.callbacks import TrainingEvaluation
from kinject.training.model import count_params
from kinject.training.preemption import Preempted

log = logging.getLogger("kinject")
SPLIT_LOSSES = ("train/loss_injected", "train/loss_background")


def start_record(
    cfg: DictConfig, config: dict[str, Any], experiment: Experiment, model: PreTrainedModel
) -> results.RunRecord:
    """The `running` record of this run (in memory until `recorded` writes it), and its announcement in the log."""
    params_total, params_non_embedding = count_params(model)
    record = results.RunRecord.start(
        cfg.paths.output_dir,
        run={
            "name": cfg.run_name or "default",
            "sweep": cfg.sweep,
            "seed": int(cfg.seed),
            "output_dir": str(cfg.paths.output_dir),
        },
        model={"name": cfg.model.name, "params_total": params_total, "params_non_embedding": params_non_embedding},
        budget=experiment.budget_summary(),
        infusion=experiment.summary(),
        fingerprint=fingerprint(config),
        config=config,
    )
    _announce(record, experiment.vocab_size)
    return record


@contextmanager
def recorded(record: results.RunRecord, trainer: L.Trainer, loggers: list[Any]) -> Iterator[None]:
    """Writes the record as running, then as interrupted or failed if the body raises; always closes the loggers."""
    if trainer.is_global_zero:
        record.write()
    outcome = "failed"
    try:
        yield
        outcome = "success"
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning ends Ctrl-C with SystemExit after a graceful stop
        if trainer.is_global_zero:
            why = stop.signal_name if isinstance(stop, Preempted) else type(stop).__name__
            step = trainer.global_step
            record.interrupt(step, f"{why}: stopped at step {step}; the same command resumes from the last checkpoint")
        raise
    except Exception as error:
        if trainer.is_global_zero:
            record.fail(error)
        raise
    finally:
        close_loggers(loggers, outcome)


def complete(
    record: results.RunRecord,
    trainer: L.Trainer,
    experiment: Experiment,
    evaluation: TrainingEvaluation,
    loggers: list[Any],
    started: float,
    checkpoint: Path,
) -> dict[str, float]:
    """The final metrics, written into the record as complete and logged (rank 0); every rank returns them."""
    final = evaluation.final
    if final is None:
        raise RuntimeError(
            f"training ended at step {trainer.global_step} of {experiment.budget.steps} without a final "
            f"evaluation; re-score the checkpoint with `python evaluate.py ckpt={checkpoint}`"
        )
    logged = trainer.callback_metrics
    metrics = {
        **final.metrics,
        "train/loss": float(logged.get("train/loss", float("nan"))),
        **{key: float(logged[key]) for key in SPLIT_LOSSES if key in logged},
    }
    per_relation = final.per_relation()
    filtered = experiment.datamodule.filter_stats().as_dict()  # a collective: every rank takes part
    record["run"]["wall_s"] = round(time.perf_counter() - started, 2)
    if trainer.is_global_zero:
        log_final(loggers, final.metrics, per_relation, trainer.global_step)
        path = record.complete(
            metrics=metrics,
            per_relation=per_relation,
            filter=filtered,
            curve=evaluation.curve,
            items=final.items,
        )
        log.info("%s | results: %s | checkpoint: %s", headline(metrics), path, checkpoint)
    return metrics


def returned(cfg: DictConfig, metrics: dict[str, float]) -> float | tuple[float, ...]:
    """`cfg.metric` of the metrics, what a sweeper optimizes (a list of keys gives a tuple)."""
    if OmegaConf.is_list(cfg.metric):
        return tuple(metrics[key] for key in cfg.metric)
    return metrics[cfg.metric]


def headline(metrics: dict[str, float]) -> str:
    keys = ("memorization/acc_token", "extraction/acc_token", "background/acc_token", "heldout/loss")
    return ", ".join(f"{key} = {metrics[key]:.3f}" for key in keys if key in metrics)


def _announce(record: results.RunRecord, vocab_size: int) -> None:
    m, b, i = record["model"], record["budget"], record["infusion"]
    log.info(
        "model %s: %.2fM parameters (%.2fM non-embedding), vocab %d",
        m["name"],
        m["params_total"] / 1e6,
        m["params_non_embedding"] / 1e6,
        vocab_size,
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
