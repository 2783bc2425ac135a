"""What a run says while it trains and before it starts: the progress line and the running record's progress, the
decisions ranks take together once every log interval, and a sweep's estimate and size warning."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from kinject import results
from kinject.cli import train as train_script
from kinject.run.sweep_estimate import SweepEstimate
from kinject.training.callbacks import LastCheckpoint
from kinject.training.preemption import Preempted, Preemption
from tests.conftest import ROOT, TINY


class ReadRecord(L.Callback):
    """Reads the run's results.json at the end of every micro-batch, as someone watching the run would, and appends
    each new progress section to the file `seen` (Hydra imports this module apart from pytest: a file, not state)."""

    def __init__(self, record: str, seen: str) -> None:
        self.record, self.seen = Path(record), Path(seen)
        self.last: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        progress = results.read(self.record).get("progress")
        if progress and progress != self.last:
            self.last = progress
            with self.seen.open("a") as out:
                out.write(json.dumps(progress) + "\n")


@pytest.mark.slow
def test_every_log_interval_rank_0_logs_progress_and_rewrites_the_running_record(make_cfg, caplog, tmp_path):
    """32 steps of 2 micro-batches, logging every 10 steps: one line and one record per logged step, tokens/s from
    the second (the first interval is the warm-up)."""
    cfg = make_cfg(
        "data.micro_batch_size=4",
        "+callbacks.read._target_=tests.test_progress.ReadRecord",
        f"+callbacks.read.record={tmp_path / 'run' / 'results.json'}",
        f"+callbacks.read.seen={tmp_path / 'seen.jsonl'}",
    )
    with caplog.at_level(logging.INFO, logger="kinject"):
        train_script.train(cfg)
    lines = [r.message for r in caplog.records if r.message.startswith("step ")]
    assert [line.split(" (")[0] for line in lines] == ["step 10/32", "step 20/32", "step 30/32"]
    pattern = r"step 20/32 \(62%\), 10.2k tokens, loss \d+\.\d{4}, [\d,]+ tokens/s, ETA \d+ s"
    assert re.fullmatch(pattern, lines[1]), lines[1]
    assert "tokens/s" not in lines[0] and "MFU" not in lines[1], "MFU on a GPU only"
    seen = [json.loads(line) for line in (tmp_path / "seen.jsonl").read_text().splitlines()]
    assert [p["step"] for p in seen] == [10, 20, 30]
    assert all(p["steps"] == 32 and p["eta_s"] >= 0 for p in seen)
    assert seen[0]["tokens_per_s"] is None and seen[1]["tokens_per_s"] > 0
    final = results.read(Path(cfg.paths.output_dir) / "results.json")
    assert final["status"] == "complete" and "progress" not in final


@pytest.mark.gpu
def test_on_a_gpu_in_bf16_the_progress_line_has_the_mfu(make_cfg, caplog):
    with caplog.at_level(logging.INFO, logger="kinject"):
        train_script.train(make_cfg("trainer=gpu"))
    lines = [r.message for r in caplog.records if r.message.startswith("step ")]
    assert re.search(r", [\d,]+ tokens/s, MFU \d+\.\d%, ETA ", lines[-1]), lines


def _trainer(world_size: int, step_saves: list[int]) -> SimpleNamespace:
    trainer = SimpleNamespace(
        global_step=0,
        max_steps=100,
        global_rank=0,
        world_size=world_size,
        decisions=[],
        save_checkpoint=lambda path: step_saves.append(trainer.global_step),
    )
    trainer.strategy = SimpleNamespace(
        reduce_boolean_decision=lambda decision, all: trainer.decisions.append(trainer.global_step) or decision,
        broadcast=lambda obj: trainer.decisions.append(trainer.global_step) or obj,
    )
    return trainer


@pytest.mark.parametrize("world_size, decided, stopped", [(2, [5], 5), (1, [1, 2, 3], 3)])
def test_across_ranks_a_signal_is_decided_once_every_k_steps_so_it_stops_within_k(
    tmp_path, world_size, decided, stopped
):
    """Deciding together is a collective (and a host sync on GPUs): every 5 steps across ranks, every step in one
    process, where it costs nothing. A signal during step 3 stops the run at step 5, or at step 3."""
    saves: list[int] = []
    trainer = _trainer(world_size, saves)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        with pytest.raises(Preempted) as stop, Preemption(LastCheckpoint(tmp_path / "last", 1000), every=5) as callback:
            callback.on_train_start(trainer, None)
            for step in range(1, 11):
                trainer.global_step = step
                if step == 3:
                    os.kill(os.getpid(), signal.SIGUSR1)
                callback.on_train_batch_end(trainer, None)
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert stop.value.step == stopped and saves == [stopped]
    assert trainer.decisions == decided


@pytest.mark.parametrize("world_size, decided", [(2, [5, 10]), (1, list(range(1, 11)))])
def test_across_ranks_a_checkpoint_due_by_time_is_decided_once_every_k_steps(tmp_path, world_size, decided):
    saves: list[int] = []
    trainer = _trainer(world_size, saves)
    last = LastCheckpoint(tmp_path / "last", every_minutes=1e-9, decide_every=5)
    last.on_train_start(trainer, None)
    for step in range(1, 11):
        trainer.global_step = step
        last.on_train_batch_end(trainer, None)
    assert trainer.decisions == decided and saves == decided


def _multirun_config(*sweep: str) -> DictConfig:
    """The primary config of `train.py -m SWEEP...` as Hydra hands it to callbacks before the jobs start."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["threads=2"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = ["threads=2", *sweep]
    return cfg


@pytest.mark.slow
def test_a_local_sweep_on_a_cpu_states_its_whole_training_time_and_a_demonstration_size_before_it_starts(
    caplog, monkeypatch
):
    """The design card's sweep: about 35 h on 2 cores (each job only warned for itself), and on the embedded world
    models this large only demonstrate the pipeline."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    with caplog.at_level(logging.INFO, logger="kinject"):
        SweepEstimate().on_multirun_start(_multirun_config("model=137m,300m,562m", "infusion.freq=10,50,100"))
    estimate, demonstration = (r.message for r in caplog.records)
    hours = re.match(r"9 jobs, about ([\d.]+) h of training on this CPU \(2 thread\(s\)", estimate)
    assert hours and 30 < float(hours.group(1)) < 40, estimate
    assert "137m 3 x 86 min, 300m 3 x" in estimate and "model=tiny" in estimate and "hydra/launcher=slurm" in estimate
    assert demonstration.startswith("model=137m,300m,562m on the embedded world (data=synthetic, 1.0M tokens at")
    assert "a demonstration of the pipeline" in demonstration
    assert "experiment=paper" in demonstration and "data=local data.files=" in demonstration


def test_a_short_sweep_of_cpu_sizes_is_stated_without_a_warning(caplog):
    with caplog.at_level(logging.INFO, logger="kinject"):
        SweepEstimate().on_multirun_start(_multirun_config("model=tiny,xs", "infusion.freq=1,2"))
    (estimate,) = caplog.records
    assert estimate.levelno == logging.INFO and estimate.message.startswith("4 jobs, about ")
    assert "tiny 2 x" in estimate.message and "xs 2 x" in estimate.message


@pytest.mark.slow
def test_the_estimate_comes_from_the_real_cli_before_the_first_job_and_leaves_the_jobs_alone(tmp_path, cache_dir):
    """Through train.py -m (Hydra already running: the jobs keep their name, so their log is train.log); the
    jobs here are refused at once, so nothing trains."""
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            *TINY,
            "model=137m,tiny",
            "infusion.freq=-1",
            f"paths.cache_dir={cache_dir}",
            f"hydra.sweep.dir={tmp_path}",
            "paths.output_dir=${hydra:runtime.output_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = done.stdout + done.stderr
    assert re.search(r"2 jobs, about .* of training on this CPU .*: 137m 1 x .*, tiny 1 x", out), out[-3000:]
    assert out.index("2 jobs, about") < out.index("Launching jobs")
    assert "model=137m on the embedded world" in out
    assert sorted(p.name for p in tmp_path.rglob("*.log")) == ["train.log", "train.log"]


def test_a_single_run_of_a_large_model_on_the_embedded_world_is_called_a_demonstration(make_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="kinject"):
        SweepEstimate().on_run_start(make_cfg("model=137m"))
        SweepEstimate().on_run_start(make_cfg("model=tiny"))
        SweepEstimate().on_run_start(make_cfg("model=137m", "data=local", "data.files=x.parquet"))
    assert [r.message.split(" on ")[0] for r in caplog.records] == ["model=137m"]
    assert json.dumps([r.message for r in caplog.records]).count("demonstration") == 1
