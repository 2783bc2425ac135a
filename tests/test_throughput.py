"""MFU accounting, on CPU with faked GPU names: dense peaks, and time per optimizer step, not micro-batch; the
estimate a long CPU job announces."""

from __future__ import annotations

import logging
import re

import pytest
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf

from kinject.cli import train as train_script
from kinject.cli.train import build_module, build_trainer
from kinject.run.experiment import prepare
from kinject.training.model import ModelSpec, flops_per_token
from kinject.training.throughput import (
    CPU_FLOPS_PER_THREAD,
    OptimizerStepTimer,
    cpu_warning,
    mfu,
    peak_flops,
    training_seconds,
)
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H200", 989),
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA L40S", 362),
        ("NVIDIA L4", 121),
    ],
)
def test_dense_bf16_peaks_by_device_name(name, tflops):
    assert peak_flops(name) == tflops * 1e12


def test_an_unknown_gpu_has_no_peak():
    assert peak_flops("Some Future GPU") is None


@pytest.mark.slow
def test_throughput_is_counted_per_optimizer_step_with_accumulation(make_cfg):
    cfg = make_cfg("data.micro_batch_size=2", "tokens=8192", "eval.heldout_sequences=0")
    experiment = prepare(cfg)
    budget = experiment.budget
    assert budget.accumulation == 4
    module = build_module(cfg, experiment)
    timer = OptimizerStepTimer()
    build_trainer(cfg, experiment, [], [timer]).fit(module, datamodule=experiment.datamodule)
    assert len(timer.times) == budget.steps == 16
    tokens_per_step = budget.batch_size * budget.seq_len
    elapsed = timer.times[-1] - timer.times[1]
    assert timer.tokens_per_s(tokens_per_step, warmup=2) == pytest.approx(14 * tokens_per_step / elapsed)
    flops_per_token = module.flops_per_batch / (budget.micro_batch_size * budget.seq_len)
    assert mfu(1e5, flops_per_token, peak_flops("NVIDIA H200")) == pytest.approx(1e5 * flops_per_token / 989e12)


class _Collect(Logger):
    """A logger that keeps what it is given, with the step."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "collect"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((int(step or 0), dict(metrics)))


@pytest.mark.slow
def test_throughput_and_mfu_are_measured_once_every_log_interval_over_whole_optimizer_steps(make_cfg):
    """4 micro-batches a step, logging every 4 steps: measured at steps 8, 12 and 16 only (the first interval, with
    the warm-up, left out), counting tokens and FLOPs of whole global batches."""
    cfg = make_cfg("data.micro_batch_size=2", "tokens=8192", "eval.heldout_sequences=0", "trainer.log_every_n_steps=4")
    experiment = prepare(cfg)
    budget = experiment.budget
    assert budget.accumulation == 4 and budget.steps == 16
    module = build_module(cfg, experiment)
    collect, timer = _Collect(), OptimizerStepTimer()
    build_trainer(cfg, experiment, [collect], [timer]).fit(module, datamodule=experiment.datamodule)
    measured = {step: m for step, m in collect.logged if "train/device/items_per_sec" in m}
    assert sorted(measured) == [8, 12, 16]
    flops_per_token = module.flops_per_batch / (budget.micro_batch_size * budget.seq_len)
    for m in measured.values():
        assert m["train/device/batches_per_sec"] * budget.tokens_per_step == pytest.approx(
            m["train/device/items_per_sec"]
        )
        assert m["train/device/flops_per_sec"] == pytest.approx(m["train/device/items_per_sec"] * flops_per_token)
    by_timer = 4 * budget.tokens_per_step / (timer.times[15] - timer.times[11])  # steps 13 to 16
    assert measured[16]["train/device/items_per_sec"] == pytest.approx(by_timer, rel=0.5)


def test_the_cpu_estimate_matches_the_measured_137m_job_and_short_jobs_get_no_warning():
    """Measured on 2 cores: 137m on the default 1M-token job reached step 9 of 488 in 96 s, about 85 minutes."""
    model = OmegaConf.load(ROOT / "conf" / "model" / "137m.yaml")
    spec = ModelSpec.from_config({**model, "max_position_embeddings": 128})
    flops = flops_per_token(spec, 32000, 128)
    assert 70 * 60 < training_seconds(flops, 999_424, 2 * CPU_FLOPS_PER_THREAD) < 100 * 60
    warning = cpu_warning("137m", flops, 999_424, threads=2)
    assert re.search(r"model 137m on the CPU: training alone should take about \d+ min", warning)
    assert all(way in warning for way in ("model=tiny", "trainer=gpu", "hydra/launcher=slurm"))
    assert "days" in cpu_warning("3b", 19.9e9, 60_000_000_000, threads=2)
    assert cpu_warning("tiny", 7.6e6, 999_424, threads=2) is None


def test_a_long_cpu_job_is_announced_before_training(make_cfg, monkeypatch, caplog):
    def stop(*args, **kwargs):
        raise InterruptedError("stopped before training")

    monkeypatch.setattr(train_script, "build_trainer", stop)
    with caplog.at_level(logging.WARNING, logger="kinject"), pytest.raises(InterruptedError):
        train_script.train(make_cfg("model=137m", "tokens=1000000"))
    assert any("model 137m on the CPU: training alone should take about" in r.message for r in caplog.records)
