"""A multirun's failed jobs: one line each, listed once at the end by the sweep's own process, and a bad value
ends the sweep with exit code 2 and no traceback, as a single run with a bad value does."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from kinject.errors import ConfigError
from kinject.run import failure_report
from kinject.run.failure_report import BASIC_SWEEPER, FILENAME, FailureReport
from tests.conftest import TINY, console_script

OPTUNA_SWEEPER = "hydra_plugins.kinject_optuna.sweeper.OptunaSweeper"


def failed(overrides: list[str], error: Exception) -> JobReturn:
    """A job's return as Hydra's run_job leaves it when the task raised `error`."""
    try:
        raise error
    except Exception as raised:
        return JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=raised)


def sweep_config(folder: Path, sweeper: str) -> Any:
    return OmegaConf.create(
        {"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(folder)}, "sweeper": {"_target_": sweeper}}}
    )


@pytest.mark.parametrize("sweeper", [BASIC_SWEEPER, OPTUNA_SWEEPER])
def test_each_failed_job_is_one_line_of_the_sweeps_list(tmp_path: Path, monkeypatch, capsys, sweeper: str) -> None:
    """Jobs may run in other processes (joblib workers on GPUs, SLURM): each appends its line to a file in the
    sweep folder, which the sweep's process prints at exit. Under the basic sweeper a bad value's job returns
    an exit with code 2, which Hydra raises past its traceback printer once the batch is done; the Optuna
    sweeper goes on after a failed trial, so its jobs keep their error."""
    at_exit: list[tuple] = []
    monkeypatch.setattr(failure_report, "atexit", SimpleNamespace(register=lambda *call: at_exit.append(call)))
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    (tmp_path / FILENAME).write_text("a line of an earlier sweep\n")
    config = sweep_config(tmp_path, sweeper)
    report = FailureReport()
    report.on_multirun_start(config)
    bad = failed(["infusion.freq=-1"], ConfigError("infusion.freq", "an integer >= 0", -1))
    crashed = failed(["optim.lr=1"], RuntimeError("diverged\nat step 3"))
    for job in (bad, crashed):
        report.on_job_end(config, job)

    ((report_at_exit, path),) = at_exit
    report_at_exit(path)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("2 job(s) failed (") and out[0].endswith(f"the list: {tmp_path / FILENAME}):")
    assert out[1].startswith("  - infusion.freq=-1: ConfigError: infusion.freq: expected an integer >= 0, got -1 at ")
    assert out[2].startswith("  - optim.lr=1: RuntimeError: diverged at step 3 at ") and len(out) == 3
    assert isinstance(crashed._return_value, RuntimeError)
    if sweeper == BASIC_SWEEPER:
        assert type(bad._return_value) is SystemExit and bad._return_value.code == 2
    else:
        assert isinstance(bad._return_value, ConfigError)


def test_a_sweep_without_failures_prints_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    at_exit: list[tuple] = []
    monkeypatch.setattr(failure_report, "atexit", SimpleNamespace(register=lambda *call: at_exit.append(call)))
    FailureReport().on_multirun_start(sweep_config(tmp_path, BASIC_SWEEPER))
    ((report_at_exit, path),) = at_exit
    report_at_exit(path)
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_a_sweep_with_bad_values_lists_them_and_exits_2_without_a_traceback(tmp_path: Path, cache_dir: Path) -> None:
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        [
            console_script("kinject-train"),
            "-m",
            *TINY,
            "infusion.freq=-1,-2",
            f"paths.cache_dir={cache_dir}",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.count("job(s) failed") == 1 and "2 job(s) failed" in done.stdout
    listed = [line for line in done.stdout.splitlines() if line.startswith("  - ")]
    assert [line.split(": ", 1)[1] for line in listed] == [
        f"ConfigError: infusion.freq: expected an integer >= 0, got {value} at {line.rsplit(' at ', 1)[1]}"
        for value, line in zip((-1, -2), listed)
    ]
    assert len((sweep / FILENAME).read_text().splitlines()) == 2
