"""MFU accounting, on CPU with faked GPU names: dense peaks, and time per optimizer step, not micro-batch."""

from __future__ import annotations

import pytest

from kinject.run.experiment import prepare
from kinject.training.throughput import OptimizerStepTimer, mfu, peak_flops
from train import build_module, build_trainer


@pytest.mark.parametrize("name, tflops", [("NVIDIA H200", 989), ("NVIDIA H100 80GB HBM3", 989),
                                          ("NVIDIA H100 PCIe", 756), ("NVIDIA A100-SXM4-80GB", 312),
                                          ("NVIDIA L40S", 362), ("NVIDIA L4", 121)])
def test_dense_bf16_peaks_by_device_name(name, tflops):
    assert peak_flops(name) == tflops * 1e12


def test_an_unknown_gpu_has_no_peak():
    assert peak_flops("Some Future GPU") is None


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
