"""Distribution on CPU: DDP over two gloo processes, the SLURM launcher's parameters, the local-DDP guard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy

from tests.conftest import ROOT, TINY


def _run(*overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    flags = ["-m"] if multirun else []
    return subprocess.run([sys.executable, "train.py", *flags, *TINY, *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _seen(folder: Path) -> dict[int, set[int]]:
    steps: dict[int, set[int]] = {}
    for rank_file in folder.glob("rank*.json"):
        for step, indices in json.loads(rank_file.read_text()).items():
            assert not steps.setdefault(int(step), set()) & set(indices), "a sequence was read twice"
            steps[int(step)] |= set(indices)
    return steps


def test_two_process_ddp_covers_the_same_data_as_one_process(tmp_path, cache_dir):
    results = {}
    for name, trainer in (("single", "trainer=cpu"), ("ddp", "trainer=ddp_cpu")):
        done = _run(trainer, "trainer.devices=" + ("1" if name == "single" else "2"), "tokens=4096",
                    f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path / name}",
                    "+callbacks.record._target_=tests.helpers.RecordIndices", f"+callbacks.record.path={tmp_path / name / 'seen'}")
        assert done.returncode == 0, done.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    single, ddp = _seen(tmp_path / "single" / "seen"), _seen(tmp_path / "ddp" / "seen")
    assert len(list((tmp_path / "ddp" / "seen").glob("rank*.json"))) == 2
    assert single == ddp == {s: set(range(8 * s, 8 * s + 8)) for s in range(8)}
    assert results["single"]["metrics"]["heldout/loss"] == pytest.approx(results["ddp"]["metrics"]["heldout/loss"], rel=1e-3)


def test_local_multirun_refuses_multi_device_jobs(tmp_path, cache_dir):
    done = _run("trainer=ddp_cpu", f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path}",
                "paths.output_dir=${hydra:runtime.output_dir}", multirun=True)
    assert done.returncode != 0
    assert "trainer.devices: expected 1 device per job in a local multirun" in done.stdout + done.stderr


def _compose(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


class _RecordingExecutor:
    """Stands in for submitit.AutoExecutor: keeps what the launcher would submit."""

    submitted: dict = {}

    def __init__(self, cluster: str, **init: object) -> None:
        _RecordingExecutor.submitted = {"cluster": cluster, **init}

    def update_parameters(self, **params: object) -> None:
        _RecordingExecutor.submitted.update(params)

    def map_array(self, *args: object) -> list:
        return []


def test_slurm_launcher_derives_tasks_and_gpus_from_the_trainer(tmp_path, monkeypatch):
    cfg = _compose("hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                   "hydra.launcher.partition=gpu", "hydra.launcher.account=lab", f"hydra.sweep.dir={tmp_path}")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    monkeypatch.setattr(submitit, "AutoExecutor", _RecordingExecutor)
    launcher.launch([["infusion.freq=10"]], initial_job_idx=0)
    submitted = _RecordingExecutor.submitted
    assert submitted["cluster"] == "slurm"
    assert submitted["gpus_per_node"] == submitted["tasks_per_node"] == 4
    assert submitted["nodes"] == 2
    assert submitted["slurm_partition"] == "gpu" and submitted["slurm_account"] == "lab"
    assert submitted["slurm_max_num_timeout"] == 3


def test_fsdp_strategy_wraps_llama_decoder_layers():
    cfg = _compose("trainer=fsdp")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert cfg.trainer.precision == "bf16-mixed"
