"""kinject-gpucheck's logic, on the CPU with a tiny model: the checks run the real train.py and evaluate.py, a
resume is told from a rerun by the step it starts at, and a failed check makes a failing exit."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from kinject.gpucheck import eval_share, max_difference, memory_within
from tests.conftest import console_script


def test_the_pass_rules():
    assert memory_within(measured=10e9, estimated=12e9, tolerance=0.25)
    assert not memory_within(measured=10e9, estimated=13e9, tolerance=0.25)
    assert not memory_within(measured=10e9, estimated=7e9, tolerance=0.25)
    assert eval_share(eval_s_per_evaluation=3.0, step_s=1.0, every_n_steps=97) == pytest.approx(0.03)
    assert max_difference({"a": 1.0, "b": 2.0}, {"a": 1.5, "b": 2.0}) == 0.5
    assert max_difference({"a": 1.0}, {"a": 1.0, "b": 2.0}) == math.inf


def _gpucheck(tmp_path, *checks: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`kinject-gpucheck --cpu` with these checks; its exit and its report."""
    out = tmp_path / "report.json"
    command = [console_script("kinject-gpucheck"), "--cpu", *checks, f"--out={out}", f"--workdir={tmp_path / 'runs'}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text()) if out.is_file() else {}
    assert report.get("machine", {}).get("device") == "cpu", done.stdout[-3000:] + done.stderr[-3000:]
    return done, report


@pytest.mark.slow
def test_the_throughput_and_accumulation_checks_on_the_cpu_pass(tmp_path):
    done, report = _gpucheck(tmp_path, "--checks", "throughput,accumulation")
    assert done.returncode == 0 and report["passed"] is True, done.stdout[-3000:] + done.stderr[-3000:]
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["throughput"]["ok"] and checks["throughput"]["figures"]["tokens_per_s"] > 0
    accumulation = checks["accumulation"]
    assert accumulation["ok"], accumulation
    assert accumulation["figures"]["accumulation"] == 4 and accumulation["figures"]["curve_steps"] == [0, 10, 20]
    assert accumulation["figures"]["evaluate_max_difference"] <= 1e-5


@pytest.mark.slow
def test_a_failed_check_fails_the_command_with_the_figures_of_a_real_resume(tmp_path):
    """A resume tolerance below zero fails `fsdp_resume` whatever it measures: the failing exit, with the figures
    of a real stop and resume."""
    done, report = _gpucheck(tmp_path, "--checks", "fsdp_resume", "--resume-tolerance=-1")
    assert done.returncode == 1 and "FAILED: fsdp_resume" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    (resume,) = report["checks"]
    assert report["passed"] is False and not resume["ok"]
    figures = resume["figures"]
    assert 0 < figures["stopped_at"] == figures["resumed_from"] < 24, figures
    assert figures["max_difference"] <= 1e-5 and figures["evaluate_max_difference"] <= 1e-5
