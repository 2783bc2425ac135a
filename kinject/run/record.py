"""What a run writes about itself: its record (started before training, then complete, interrupted or
failed; rank 0 writes), the lines that announce it, and the metric it returns to a sweeper."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel

from kinject import results
from kinject.errors import ConfigError
from kinject.fingerprint import fingerprint
from kinject.init import recorded as init_recorded
from kinject.run.experiment import Experiment
from kinject.run.tracking import close_loggers, log_final
from kinject.training.callbacks import TrainingEvaluation
from kinject.training.checkpoint import DamagedCheckpoint, contents, readable
from kinject.training.model import count_params
from kinject.training.preemption import Preempted

log = logging.getLogger("kinject")
SPLIT_LOSSES = ("train/loss_injected", "train/loss_background")
LOSSES = ("train/loss", *SPLIT_LOSSES)


def start_record(
    cfg: DictConfig, config: dict[str, Any], experiment: Experiment, model: PreTrainedModel
) -> results.RunRecord:
    """The `running` record of this run (in memory until `recorded` writes it), and its announcement in the log."""
    params_total, params_non_embedding = count_params(model)
    init, pretraining = init_recorded(cfg, experiment.budget.tokens_trained)
    record = results.RunRecord.start(
        cfg.paths.output_dir,
        run={
            "name": cfg.run_name or "default",
            "sweep": cfg.sweep,
            "seed": int(cfg.seed),
            "output_dir": str(cfg.paths.output_dir),
        },
        model={
            "name": cfg.model.name,
            "params_total": params_total,
            "params_non_embedding": params_non_embedding,
            **init,
        },
        budget={**experiment.budget_summary(), **pretraining},
        infusion=experiment.summary(),
        fingerprint=fingerprint(config),
        config=config,
    )
    _announce(record, experiment.vocab_size)
    return record


class Resumption(L.Callback):
    """What the record says of a resume, and what a resumed process needs of the one before it. Puts into the
    record's `run` the step this process's training started at (`start_step`: 0, or the resumed checkpoint's) and
    announces a resume; `complete` and `recorded` add `steps_trained`. Every checkpoint carries the last logged
    training losses: a run cut off after its last step (while it was recorded) resumes at that step and trains
    and logs none. train.py sets `record` once the record is started."""

    def __init__(self, record: results.RunRecord | None = None) -> None:
        self.record = record
        self.carried: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if self.record is not None:
            self.record["run"]["start_step"] = step
        if step and trainer.is_global_zero:
            left = max(0, int(trainer.max_steps) - step)
            log.info(
                "resumed from %s at step %d of %d: training the %d steps left",
                trainer.ckpt_path,
                step,
                trainer.max_steps,
                left,
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["kinject_losses"] = self.losses(trainer)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.carried = dict(checkpoint.get("kinject_losses") or {})

    def losses(self, trainer: L.Trainer) -> dict[str, float]:
        """The last logged training losses: this process's, else those of the checkpoint it resumed."""
        logged = trainer.callback_metrics
        return {**self.carried, **{key: float(logged[key]) for key in LOSSES if key in logged}}


def _trained(record: results.RunRecord, trainer: L.Trainer) -> None:
    """`steps_trained` by this process; a process whose training never started (resumed at the last step, or
    stopped before) started where it stands."""
    run = record["run"]
    run.setdefault("start_step", trainer.global_step)
    run["steps_trained"] = trainer.global_step - run["start_step"]


@contextmanager
def recorded(record: results.RunRecord, trainer: L.Trainer, loggers: list[Any], checkpoint: Path) -> Iterator[None]:
    """Writes the record as running, then as interrupted or failed if the body raises; always closes the loggers.
    An interruption ends with the step the same command resumes from, and Ctrl-C with exit status 130."""
    if trainer.is_global_zero:
        record.write()
    outcome = "failed"
    try:
        yield
        outcome = "success"
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning ends Ctrl-C with SystemExit after a graceful stop
        stopped = _as_signal(stop)
        if trainer.is_global_zero:
            step = trainer.global_step
            _trained(record, trainer)
            resumes = _resume_line(checkpoint, trainer.max_steps)
            record.interrupt(
                step, f"{stopped.signal_name if stopped else type(stop).__name__}: stopped at step {step}; {resumes}"
            )
            log.warning("interrupted at step %d of %d: %s", step, trainer.max_steps, resumes)
        if stopped is not None and stopped is not stop:
            raise stopped from stop
        raise
    except Exception as error:
        if trainer.is_global_zero:
            _trained(record, trainer)
            record.fail(error)
        raise
    finally:
        close_loggers(loggers, outcome)


def _as_signal(stop: BaseException) -> Preempted | None:
    """The signal that stopped the run: a preemption's, or SIGINT for Ctrl-C (which Lightning turns into exit
    status 1 after a graceful stop; 128 + 2 is what a shell and a scheduler expect)."""
    if isinstance(stop, Preempted):
        return stop
    if isinstance(stop, KeyboardInterrupt) or isinstance(stop.__context__, KeyboardInterrupt):
        return Preempted(signal.SIGINT)
    return None


def _resume_line(checkpoint: Path, steps: int) -> str:
    """How the run goes on: from which step the same command resumes."""
    found = readable(checkpoint)
    try:
        step = None if found is None else int(contents(found)["global_step"])
    except DamagedCheckpoint:
        step = None
    if step is None:
        return "no checkpoint was saved yet: the same command starts it again from step 0"
    return f"the same command resumes from {found} at step {step} of {steps}"


def complete(
    record: results.RunRecord,
    trainer: L.Trainer,
    experiment: Experiment,
    evaluation: TrainingEvaluation,
    loggers: list[Any],
    started: float,
    checkpoint: Path,
    resumption: Resumption,
) -> dict[str, float]:
    """The final metrics, written into the record as complete and logged (rank 0); every rank returns them."""
    final = evaluation.final
    if final is None:
        raise RuntimeError(
            f"training ended at step {trainer.global_step} of {experiment.budget.steps} without a final "
            f"evaluation; re-score the checkpoint with `python evaluate.py ckpt={checkpoint}`"
        )
    metrics = {**final.metrics, "train/loss": float("nan"), **resumption.losses(trainer)}
    per_relation = final.per_relation()
    filtered = experiment.datamodule.filter_stats().as_dict()  # a collective: every rank takes part
    record["run"]["wall_s"] = round(time.perf_counter() - started, 2)
    _trained(record, trainer)
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


def returned_from(cfg: DictConfig, done: results.RunRecord) -> float | tuple[float, ...]:
    """`cfg.metric` of a complete record (a skipped run); one that the record lacks (written by a version that
    had no such metric) is named, with what to do."""
    metrics = done.data.get("metrics") or {}
    keys = list(cfg.metric) if OmegaConf.is_list(cfg.metric) else [cfg.metric]
    missing = [key for key in keys if key not in metrics]
    if missing:
        raise ConfigError(
            "metric",
            f"a metric that the complete run in {done.path.parent} recorded, one of {sorted(metrics)}",
            ", ".join(missing),
            hint=f"score it again (python evaluate.py ckpt={done.path.parent / 'checkpoints' / 'last.ckpt'}) or "
            "add overwrite=true to train it again",
        )
    return returned(cfg, metrics)


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
