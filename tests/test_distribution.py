"""Distribution on CPU: DDP and FSDP2 over two gloo processes, the SLURM launcher's parameters, the local-DDP guard."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import submitit
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.fabric.utilities.load import _METADATA_FILENAME
from omegaconf import OmegaConf
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from kinject.cli.evaluate import evaluate
from kinject.fingerprint import fingerprint
from kinject.training.devices import LOCKS_ENV, free_gpu, job_devices
from kinject.training.distributed import FSDP2Strategy, fully_shard_llama
from kinject.training.lightning_module import CausalLM
from tests.conftest import ROOT, TINY


def _run(*overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    """train.py on the tiny config, evaluating at step 0 as well: its collective is the first every rank meets."""
    flags = ["-m"] if multirun else []
    command = [sys.executable, "train.py", *flags, *TINY, "eval.at_start=true", *overrides]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)


def _seen(folder: Path) -> dict[int, set[int]]:
    steps: dict[int, set[int]] = {}
    for rank_file in folder.glob("rank*.json"):
        for step, indices in json.loads(rank_file.read_text()).items():
            assert not steps.setdefault(int(step), set()) & set(indices), "a sequence was read twice"
            steps[int(step)] |= set(indices)
    return steps


def _train(tmp_path: Path, name: str, cache_dir: Path, *overrides: str) -> dict:
    done = _run(
        *overrides,
        "tokens=4096",
        "eval.every_n_steps=4",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path / name}",
        "+callbacks.record._target_=tests.helpers.RecordIndices",
        f"+callbacks.record.path={tmp_path / name / 'seen'}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / name / "results.json").read_text())


def _assert_same_run(a: dict, b: dict) -> None:
    for key in ("heldout/loss",):
        assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-3)
        assert [p[key] for p in a["curve"]] == pytest.approx([p[key] for p in b["curve"]], rel=1e-3)
    for suite, record in a["items"].items():
        if "logprob" in record:  # the suites scored by likelihood (recall suites decode: no log-probabilities)
            assert np.allclose(record["logprob"], b["items"][suite]["logprob"], atol=2e-3), suite


FSDP = ("trainer=fsdp_cpu", "data.micro_batch_size=2")


# its tests run on one pytest-xdist worker (--dist loadgroup), which builds the fixture once
with_fsdp_run = pytest.mark.xdist_group("fsdp_run")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, cache_dir) -> tuple[Path, dict]:
    """An uninterrupted FSDP2 run (2 gloo ranks, 2 micro-batches per step on each): its folder and results."""
    root = tmp_path_factory.mktemp("fsdp_run")
    return root / "fsdp", _train(root, "fsdp", cache_dir, *FSDP)


@with_fsdp_run
@pytest.mark.slow
def test_ddp_and_fsdp_with_accumulation_and_periodic_evaluation_match_one_process(tmp_path, cache_dir, fsdp_run):
    """Two gloo ranks, 2 micro-batches per step on each, evaluating every 4 steps: the case that hung
    (a barrier reached a different number of times per rank) and the one that failed (FSDP evaluation)."""
    single = _train(tmp_path, "single", cache_dir, "trainer=cpu", "data.micro_batch_size=4")
    ddp = _train(tmp_path, "ddp", cache_dir, "trainer=ddp_cpu", "data.micro_batch_size=2")
    fsdp_dir, fsdp = fsdp_run
    expected = {s: set(range(8 * s, 8 * s + 8)) for s in range(8)}
    for folder in (tmp_path / "single", tmp_path / "ddp", fsdp_dir):
        assert _seen(folder / "seen") == expected, folder.name
    assert len(list((tmp_path / "ddp" / "seen").glob("rank*.json"))) == 2
    for run in (single, ddp, fsdp):
        assert run["status"] == "complete" and [p["step"] for p in run["curve"]] == [0, 4, 8]
    _assert_same_run(single, ddp)
    _assert_same_run(single, fsdp)

    sharded = fsdp_dir / "checkpoints" / "last.ckpt"
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2
    assert [p.name for p in sharded.parent.iterdir()] == ["last.ckpt"], "no staging folder is left after a save"
    again = evaluate(sharded, device="cpu")
    for key, value in again.metrics.items():
        assert value == pytest.approx(fsdp["metrics"][key], abs=1e-5), key

    crash = (*FSDP, "trainer.checkpoint.every_n_steps=2")
    crashed = _run(
        *crash,
        "tokens=4096",
        "eval.every_n_steps=4",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={tmp_path / 'resumed'}",
        "+callbacks.crash._target_=tests.helpers.CrashAt",
        "+callbacks.crash.step=5",
    )
    assert crashed.returncode != 0 and "simulated crash at step 5" in crashed.stdout + crashed.stderr
    resumed = _train(tmp_path, "resumed", cache_dir, *crash)
    assert (resumed["run"]["start_step"], resumed["run"]["steps_trained"]) == (4, 4), "resumed at step 4 of 8"
    assert resumed["metrics"] == pytest.approx(fsdp["metrics"], abs=1e-5)
    assert len(resumed["curve"]) == len(fsdp["curve"])
    for point, expected_point in zip(resumed["curve"], fsdp["curve"]):
        assert point == pytest.approx(expected_point, abs=1e-5)


@with_fsdp_run
@pytest.mark.slow
def test_a_run_killed_during_a_sharded_save_resumes_from_the_previous_checkpoint(tmp_path, cache_dir, fsdp_run):
    """Rank 1 dies once it has written its shards of step 6 (rank 0 is killed by Lightning's launcher): written in
    place, last.ckpt would hold shards of step 6 under the step count of step 4. The save of step 4 is the one
    resumed from, and the run ends with the uninterrupted result."""
    folder, first_steps = tmp_path / "killed", tmp_path / "first_steps"
    every_2 = (*FSDP, "trainer.checkpoint.every_n_steps=2", "+callbacks.first._target_=tests.helpers.RecordFirstStep")
    every_2 = (*every_2, f"+callbacks.first.path={first_steps}")
    killed = _run(
        *every_2,
        "tokens=4096",
        "eval.every_n_steps=4",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={folder}",
        "+callbacks.die._target_=tests.helpers.DieMidShardedSave",
        "+callbacks.die.step=6",
    )
    assert killed.returncode != 0, killed.stderr[-3000:]
    last = folder / "checkpoints" / "last.ckpt"
    assert torch.load(last / _METADATA_FILENAME, weights_only=True)["global_step"] == 4
    assert (folder / "checkpoints" / "last.ckpt.tmp-6").is_dir(), "the save of step 6 was cut off mid-way"

    resumed = _train(tmp_path, "killed", cache_dir, *every_2)
    assert first_steps.read_text().split() == ["0", "4"]
    assert resumed["status"] == "complete"
    assert (resumed["run"]["start_step"], resumed["run"]["steps_trained"]) == (4, 4)
    assert resumed["metrics"] == pytest.approx(fsdp_run[1]["metrics"], abs=1e-5)
    for point, expected_point in zip(resumed["curve"], fsdp_run[1]["curve"], strict=True):
        assert point == pytest.approx(expected_point, abs=1e-5)
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]


def test_weight_decay_groups_by_name_on_a_sharded_model(make_cfg, tmp_path):
    """Under sharding the optimizer sees the wrapped parameters: decay must still cover every matrix."""
    cfg = make_cfg()
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        module = CausalLM(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=64)
        fully_shard_llama(module.model, init_device_mesh("cpu", (1,)), bf16=False)
        decay, no_decay = module.configure_optimizers()["optimizer"].param_groups
    finally:
        torch.distributed.destroy_process_group()
    names = dict(module.named_parameters())
    assert all(isinstance(p, DTensor) for p in names.values())
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    assert {id(p) for p in decay["params"]} == {id(p) for n, p in names.items() if p.ndim == 2}
    assert decay["weight_decay"] == cfg.optim.weight_decay and no_decay["weight_decay"] == 0


@pytest.mark.slow
def test_local_multirun_refuses_multi_device_jobs(tmp_path, cache_dir):
    done = _run(
        "trainer=ddp_cpu",
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={tmp_path}",
        "paths.output_dir=${hydra:runtime.output_dir}",
        multirun=True,
    )
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
    cfg = _compose(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=lab",
        f"hydra.sweep.dir={tmp_path}",
    )
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


def test_fsdp_preset_is_fsdp2_in_bf16_checkpointing_by_time():
    cfg = _compose("trainer=fsdp")
    assert isinstance(instantiate(cfg.trainer.strategy), FSDP2Strategy)
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.checkpoint.every_n_steps is None and cfg.trainer.checkpoint.every_minutes > 0


def test_under_slurm_only_rank_zero_writes_hydra_files_and_each_rank_logs_apart(monkeypatch, tmp_path):
    import kinject.training.distributed  # noqa: F401  (registers the resolvers train.py uses)

    for rank, subdir, log in (("0", ".hydra", "train.log"), ("3", None, "train_rank3.log")):
        monkeypatch.setenv("SLURM_PROCID", rank)
        cfg = _compose(f"hydra.run.dir={tmp_path}", "hydra.job.name=train")
        OmegaConf.update(cfg, "hydra.runtime.output_dir", str(tmp_path), force_add=True)
        assert cfg.hydra.output_subdir == subdir
        assert Path(cfg.hydra.job_logging.handlers.file.filename).name == log


def _fake_gpus(monkeypatch, count: int, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)


def _trainer(*overrides: str) -> dict:
    return OmegaConf.to_container(_compose(*overrides).trainer, resolve=True)


def test_the_default_trainer_is_the_cpu_one_here_and_a_gpu_in_bf16_where_cuda_is(make_cfg, monkeypatch):
    _fake_gpus(monkeypatch, 0)
    assert _trainer() == _trainer("trainer=cpu")
    default, cpu = (OmegaConf.to_container(make_cfg(*extra), resolve=True) for extra in ([], ["trainer=cpu"]))
    assert fingerprint(default) == fingerprint(cpu), "runs of trainer=cpu must resume under the default"

    _fake_gpus(monkeypatch, 8)
    assert _trainer() == _trainer("trainer=gpu")
    assert _trainer()["accelerator"] == "gpu" and _trainer()["precision"] == "bf16-mixed"
    assert _trainer()["devices"] == 1, "one GPU per job"
    assert _trainer("trainer=cpu")["accelerator"] == "cpu"

    _fake_gpus(monkeypatch, 1, bf16=False)
    assert _trainer()["precision"] == "16-mixed"


@pytest.fixture
def gpu_locks(monkeypatch, tmp_path) -> Path:
    """This test's own lock folder, standing in for the machine's."""
    monkeypatch.setenv(LOCKS_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "locks"


def _as_job_of(monkeypatch, sweep_dir: Path | None, *overrides: str):
    """The config of a job of the local multirun in `sweep_dir`, or of a single run (None), as Hydra sets it."""
    mode = ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep_dir}"] if sweep_dir else ["hydra.mode=RUN"]
    cfg = _compose(*mode, *overrides)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_a_local_sweep_has_one_worker_per_gpu_and_each_job_holds_its_own(monkeypatch, tmp_path, gpu_locks):
    _fake_gpus(monkeypatch, 0)
    assert _compose().hydra.launcher.n_jobs == 1, "without GPUs, one job after another, in process"
    _fake_gpus(monkeypatch, 3)
    cfg = _as_job_of(monkeypatch, tmp_path)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3

    def fourth_job() -> int:
        with free_gpu(3, poll_s=0.05) as index:
            return index

    with ThreadPoolExecutor(1) as pool:
        with job_devices(cfg) as a, job_devices(cfg) as b, job_devices(cfg) as c:
            assert [a, b, c] == [[0], [1], [2]]
            waiting = pool.submit(fourth_job)
            time.sleep(0.3)
            assert not waiting.done(), "a fourth job waits while every GPU is held"
        assert waiting.result(timeout=5) in (0, 1, 2)
    for single in ("trainer=ddp", "trainer=cpu"):
        with job_devices(_as_job_of(monkeypatch, tmp_path, single)) as devices:
            assert devices is None, single


def test_two_sweeps_and_a_single_run_on_one_machine_each_get_their_own_gpu(monkeypatch, tmp_path, gpu_locks):
    """The locks are the machine's, not a sweep's: no two kinject runs start on the same GPU, named as every
    process of the machine names it (its CUDA_VISIBLE_DEVICES entry). Under SLURM a single run keeps Lightning's
    choice among the GPUs SLURM gave it."""
    _fake_gpus(monkeypatch, 3)
    with (
        job_devices(_as_job_of(monkeypatch, tmp_path / "sweep_a")) as a,
        job_devices(_as_job_of(monkeypatch, tmp_path / "sweep_b")) as b,
        job_devices(_as_job_of(monkeypatch, None)) as single,
    ):
        assert [a, b, single] == [[0], [1], [2]]
    assert sorted(p.name for p in gpu_locks.iterdir()) == ["gpu-0.lock", "gpu-1.lock", "gpu-2.lock"]

    with free_gpu(3) as held:  # physical GPU 0, as a process that sees every GPU names it
        monkeypatch.setenv("SLURM_NTASKS", "1")
        monkeypatch.setenv("SLURM_JOB_NAME", "train")
        with job_devices(_as_job_of(monkeypatch, None)) as under_slurm:
            assert under_slurm is None
        monkeypatch.delenv("SLURM_NTASKS")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0,1")
        with job_devices(_as_job_of(monkeypatch, None)) as c, job_devices(_as_job_of(monkeypatch, None)) as d:
            assert held == 0 and [c, d] == [[0], [2]], "visible GPU 1 is GPU 0, held"


@pytest.mark.slow
def test_a_gpu_held_by_a_process_that_dies_is_free_again(gpu_locks):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from kinject.training.devices import free_gpu\n"
            "with free_gpu(2, Path(sys.argv[1])) as index:\n    print(index, flush=True); time.sleep(300)",
            str(gpu_locks),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "0"
        with free_gpu(2) as index:
            assert index == 1, "GPU 0 is held by the other process"
        holder.kill()
        holder.wait(timeout=30)
        with free_gpu(2) as index:
            assert index == 0, "its lock died with it"
    finally:
        holder.kill()
