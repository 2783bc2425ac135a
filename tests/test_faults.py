"""What goes wrong in real sweeps: killed runs, crashes mid-write, no network, diverging loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kinject import results
from kinject.cli import train as train_script
from kinject.files import write_json_atomic
from kinject.training.checkpoint import AtomicCheckpointIO
from kinject.training.lightning_module import CausalLM
from kinject.training.preemption import Preempted
from tests.conftest import ROOT, TINY


def _command(output_dir: Path, cache_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        *TINY,
        "tokens=65536",
        "trainer.checkpoint.every_n_steps=8",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={output_dir}",
        *overrides,
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> dict:
    """The results of the run the interrupted ones must end up equal to."""
    folder = tmp_path_factory.mktemp("straight")
    straight = subprocess.run(_command(folder, cache_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    return json.loads((folder / "results.json").read_text())


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path, cache_dir, uninterrupted):
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        _command(killed_dir, cache_dir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = killed_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert results.read(killed_dir / "results.json")["status"] == "running", (
        "the run finished before it could be killed"
    )
    step = torch.load(checkpoint, weights_only=True)["global_step"]
    assert 0 < step < 128

    resumed = subprocess.run(_command(killed_dir, cache_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = uninterrupted, json.loads((killed_dir / "results.json").read_text())
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-5)
    flat = [[x for row in r["items"]["memorization"]["logprob"] for x in row] for r in (a, b)]
    assert flat[0] == pytest.approx(flat[1], abs=1e-3)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_records_it_exits_non_zero_and_the_same_command_resumes(
    tmp_path, cache_dir, uninterrupted
):
    """What SLURM's preemption or `kill` sends: no periodic checkpoint is due (every 1000 steps), so the one
    found is the one saved at the step the run stopped at."""
    folder, mark = tmp_path / "stopped", tmp_path / "step5"
    command = _command(
        folder,
        cache_dir,
        "trainer.checkpoint.every_n_steps=1000",
        "+callbacks.mark._target_=tests.helpers.MarkStep",
        f"+callbacks.mark.path={mark}",
        "+callbacks.mark.step=5",
    )
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not mark.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    record = results.read(folder / "results.json")
    assert record["status"] == "interrupted" and 5 <= record["step"] < 128, record
    assert "SIGTERM: stopped at step" in record["error"]
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == record["step"]

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((folder / "results.json").read_text())
    assert again["status"] == "complete"
    assert again["metrics"] == uninterrupted["metrics"]
    assert again["curve"] == uninterrupted["curve"]


def test_a_signal_mid_accumulation_stops_after_that_step_then_the_previous_handler_runs(make_cfg, monkeypatch):
    """SIGUSR1 during the second of 4 micro-batches of step 4: the step is finished, saved and recorded, then the
    handler that was installed before the run (submitit's requeue under SLURM) is called."""
    cfg = make_cfg("data.micro_batch_size=2", "trainer.checkpoint.every_n_steps=1000")
    out = Path(cfg.paths.output_dir)
    handed_over = []

    def requeue(signum, frame):
        handed_over.append((signum, results.read(out / "results.json")["status"]))

    signal.signal(signal.SIGUSR1, requeue)
    original = CausalLM.training_step
    micro_batches = []

    def signal_during_step_4(self, batch, batch_idx):
        if self.global_step == 3:
            micro_batches.append(batch_idx)
            if len(micro_batches) == 2:
                os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CausalLM, "training_step", signal_during_step_4)
    try:
        with pytest.raises(Preempted) as stopped:
            train_script.train(cfg)
        assert signal.getsignal(signal.SIGUSR1) is requeue
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert stopped.value.code == 128 + signal.SIGUSR1
    record = results.read(out / "results.json")
    assert record["status"] == "interrupted" and record["step"] == 4
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert handed_over == [(signal.SIGUSR1, "interrupted")]


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def dies_halfway(obj, target):
        Path(target).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert io.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_crash_while_writing_results_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_json_atomic(tmp_path / "results.json", {"schema": results.SCHEMA, "status": "complete"})

    def dies_halfway(payload, handle, **kwargs):
        handle.write('{"schema": "kinj')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"schema": results.SCHEMA, "status": "running"})
    monkeypatch.undo()
    assert results.read(path)["status"] == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.slow
def test_wandb_online_without_network_falls_back_to_offline_within_seconds(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = make_cfg("logger=wandb_online")
    started = time.perf_counter()
    train_script.train(cfg)
    assert time.perf_counter() - started < 60
    out = Path(cfg.paths.output_dir)
    assert results.read(out / "results.json")["status"] == "complete"
    assert list((out / "wandb").glob("offline-run-*"))


def test_a_diverging_loss_stops_with_the_step_and_what_to_change(make_cfg):
    cfg = make_cfg("optim.lr=1000", "trainer.checkpoint.every_n_steps=1")
    with pytest.raises(FloatingPointError, match=r"at step \d+: lower optim.lr \(now 1000"):
        train_script.train(cfg)
    out = Path(cfg.paths.output_dir)
    record = results.read(out / "results.json")
    assert record["status"] == "failed" and "FloatingPointError" in record["error"]
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_a_requeued_job_continues_its_wandb_run(make_cfg, tmp_path):
    from kinject.run.tracking import make_loggers

    ids = [
        make_loggers(make_cfg("logger=wandb", output_dir=tmp_path / name))[0]._wandb_init for name in ("a", "a", "b")
    ]
    assert ids[0]["id"] == ids[1]["id"] != ids[2]["id"]
    assert ids[0]["resume"] == "allow"


def test_ranks_starting_at_once_train_the_tokenizer_once(tmp_path, monkeypatch):
    """Every rank of a first run asks for the same tokenizer at the same moment: one trains it."""
    from concurrent.futures import ThreadPoolExecutor

    from kinject.data import tokenizer

    trained = []
    original = tokenizer._train_bpe

    def counted(*args):
        trained.append(args[-1])
        original(*args)

    monkeypatch.setattr(tokenizer, "_train_bpe", counted)
    texts = [f"document number {i} about the city of Exampleton" for i in range(200)]
    with ThreadPoolExecutor(4) as pool:
        loaded = list(pool.map(lambda _: tokenizer.train_bpe(texts, 300, tmp_path), range(4)))
    assert len(trained) == 1
    assert len({len(t) for t in loaded}) == 1
