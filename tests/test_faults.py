"""What goes wrong in real sweeps: killed runs, crashes mid-write, no network, diverging loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME

from kinject import results
from kinject.cli import train as train_script
from kinject.files import write_json_atomic
from kinject.run import record
from kinject.run.folder import previous_config
from kinject.training.callbacks import LastCheckpoint
from kinject.training.checkpoint import AtomicCheckpointIO, clear_staging, readable, staging, swap_in
from kinject.training.lightning_module import CausalLM
from kinject.training.preemption import Preempted, Preemption
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


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_once_marked(command: list[str], mark: Path, sig: signal.Signals) -> tuple[int, str, str]:
    """Starts train.py, sends `sig` once its MarkStep callback has created `mark`; its exit code and output.
    Output goes to files, not pipes, so that a child never blocks on a full pipe before it reaches the mark; a child
    that ends or stalls unmarked fails the test (a signal sent before the handlers are installed would test nothing).
    Ctrl-C is restored to its default in the child: a shell starting the suite in the background (`cmd &`) ignores
    SIGINT, and the child would inherit that and train to the end."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, text=True, preexec_fn=_default_sigint)
        deadline = time.time() + 600
        while not mark.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        if mark.exists():
            process.send_signal(sig)
        else:
            process.kill()
        process.wait(timeout=300)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert mark.exists(), f"train.py never reached the step to signal at (exit {process.returncode}): {stderr[-2000:]}"
    return process.returncode, stdout, stderr


# its tests run on one pytest-xdist worker (--dist loadgroup), which builds the fixture once
with_uninterrupted = pytest.mark.xdist_group("uninterrupted")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir) -> dict:
    """The results of the run the interrupted ones must end up equal to."""
    folder = tmp_path_factory.mktemp("straight")
    straight = subprocess.run(_command(folder, cache_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    return json.loads((folder / "results.json").read_text())


@with_uninterrupted
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
    assert (b["run"]["start_step"], b["run"]["steps_trained"]) == (step, 128 - step), "resumed at the checkpoint"
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-5)
    flat = [[x for row in r["items"]["memorization"]["logprob"] for x in row] for r in (a, b)]
    assert flat[0] == pytest.approx(flat[1], abs=1e-3)


@with_uninterrupted
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
    returncode, _, stderr = _signal_once_marked(command, mark, signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM, stderr[-2000:]
    record = results.read(folder / "results.json")
    assert record["status"] == "interrupted" and 5 <= record["step"] < 128, record
    assert "SIGTERM: stopped at step" in record["error"]
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == record["step"]

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((folder / "results.json").read_text())
    assert again["status"] == "complete"
    assert (again["run"]["start_step"], again["run"]["steps_trained"]) == (record["step"], 128 - record["step"])
    assert f"resumed from {folder / 'checkpoints' / 'last.ckpt'} at step {record['step']} of 128" in resumed.stdout
    assert again["metrics"] == uninterrupted["metrics"]
    assert again["curve"] == uninterrupted["curve"]


@pytest.mark.slow
def test_ctrl_c_exits_130_with_the_step_it_resumes_from_and_overwrite_starts_a_clean_log(tmp_path, cache_dir):
    """Ctrl-C (SIGINT) ends the run as a shell expects (128 + 2) and says from which step the same command
    resumes: the last saved one, not the one it stopped at. overwrite=true then deletes that run's log lines too."""
    folder, mark = tmp_path / "run", tmp_path / "step6"
    command = _command(
        folder,
        cache_dir,
        "trainer.checkpoint.every_n_steps=4",
        f"hydra.run.dir={folder}",
        "+callbacks.mark._target_=tests.helpers.MarkStep",
        f"+callbacks.mark.path={mark}",
        "+callbacks.mark.step=6",
    )
    returncode, stdout, stderr = _signal_once_marked(command, mark, signal.SIGINT)
    assert returncode == 128 + signal.SIGINT, stderr[-2000:]
    record = results.read(folder / "results.json")
    step, saved = record["step"], torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert record["status"] == "interrupted" and 6 <= step < 128 and saved == step - step % 4, record
    line = f"interrupted at step {step} of 128: the same command resumes from {folder / 'checkpoints' / 'last.ckpt'}"
    assert f"{line} at step {saved} of 128" in stdout
    assert record["error"].startswith(f"SIGINT: stopped at step {step}; the same command resumes from")
    assert "Traceback" not in stdout + stderr

    again = subprocess.run([*command[:-3], "overwrite=true", "tokens=4096"], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    log = (folder / "train.log").read_text()
    assert "interrupted at step" not in log and log.count("] - budget ") == 1
    assert "overwrite=true: deleted the results, checkpoints and log of the run" in log


def test_a_signal_mid_accumulation_stops_after_that_step_and_hands_over_as_soon_as_it_is_saved(make_cfg, monkeypatch):
    """SIGUSR1 during the second of 4 micro-batches of step 4: the step is finished and saved, and right then,
    before the teardown and the loggers' finalize, rank 0 calls the handler that was installed before the run
    (submitit's, which requeues the job and exits), once. Its exit is held until the run is recorded as
    interrupted; the SIGTERM with which SLURM then ends a requeued job cuts nothing short."""
    cfg = make_cfg("data.micro_batch_size=2", "trainer.checkpoint.every_n_steps=1000")
    out = Path(cfg.paths.output_dir)
    events: list[tuple] = []

    def requeue(signum, frame):
        events.append(("requeue", signum))
        os.kill(os.getpid(), signal.SIGTERM)
        sys.exit(-1)

    save, close = LastCheckpoint.save, record.close_loggers

    def saved(self, trainer):
        save(self, trainer)
        events.append(("saved", trainer.global_step))

    def closed(loggers, outcome):
        events.append(("closed", results.read(out / "results.json")["status"]))
        close(loggers, outcome)

    monkeypatch.setattr(LastCheckpoint, "save", saved)
    monkeypatch.setattr(record, "close_loggers", closed)
    original = CausalLM.training_step
    micro_batches = []

    def signal_during_step_4(self, batch, batch_idx):
        if self.global_step == 3:
            micro_batches.append(batch_idx)
            if len(micro_batches) == 2:
                os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CausalLM, "training_step", signal_during_step_4)
    late_sigterm = []
    signal.signal(signal.SIGUSR1, requeue)
    signal.signal(signal.SIGTERM, lambda signum, frame: late_sigterm.append(signum))
    try:
        with pytest.raises(SystemExit) as stopped:
            train_script.train(cfg)
        assert signal.getsignal(signal.SIGUSR1) is requeue
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert stopped.value.code == -1, "the previous handler's exit ends the process"
    assert isinstance(stopped.value.__cause__, Preempted) and stopped.value.__cause__.code == 128 + signal.SIGUSR1
    assert events == [("saved", 4), ("requeue", signal.SIGUSR1), ("closed", "interrupted")]
    assert late_sigterm == []
    record_ = results.read(out / "results.json")
    assert record_["status"] == "interrupted" and record_["step"] == 4
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def _stop_at_step_3(tmp_path: Path, rank: int, signum: int, saved: list[int]) -> BaseException:
    """A rank of a run that receives `signum` during step 3, driven as Lightning drives the callback; what it raises."""
    trainer = SimpleNamespace(
        global_step=0,
        max_steps=8,
        global_rank=rank,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision),
        save_checkpoint=lambda path: saved.append(trainer.global_step),
    )
    with pytest.raises(SystemExit) as stopped, Preemption(LastCheckpoint(tmp_path / "last.ckpt", 1000)) as callback:
        callback.on_train_start(trainer, None)
        trainer.global_step = 3
        os.kill(os.getpid(), signum)
        callback.on_train_batch_end(trainer, None)
    return stopped.value


@pytest.mark.parametrize("rank", [0, 1])
def test_only_rank_0_hands_the_signal_over_once_the_step_is_saved(tmp_path, rank):
    """Every rank saves the step and stops; the handler that was there before (the requeue) runs on rank 0 only."""
    saved: list[int] = []
    called: list[tuple[int, list[int]]] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: called.append((signum, list(saved))))
    try:
        stopped = _stop_at_step_3(tmp_path, rank, signal.SIGUSR1, saved)
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert isinstance(stopped, Preempted) and stopped.step == 3 and stopped.code == 128 + signal.SIGUSR1
    assert saved == [3]
    assert called == ([(signal.SIGUSR1, [3])] if rank == 0 else [])


def test_under_submitit_rank_0_requeues_once_right_after_the_save_and_exits_as_submitit_does(tmp_path):
    """submitit's own handler (SIGUSR2, a time limit ahead): it decides (not timed out: requeue with the count
    of timeouts left), calls `scontrol requeue` once, after the save, and its exit is what ends the process."""
    from submitit.core.job_environment import SignalHandler

    saved: list[int] = []
    requeued: list[tuple[int, list[int]]] = []
    env = SimpleNamespace(global_rank=0, _requeue=lambda countdown: requeued.append((countdown, list(saved))))
    handler = SignalHandler(env, None, SimpleNamespace(_timeout_min=60, _timeout_countdown=3, function=print))
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    try:
        stopped = _stop_at_step_3(tmp_path, 0, signal.SIGUSR2, saved)
    finally:
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    assert requeued == [(3, [3])]
    assert stopped.code == -1 and isinstance(stopped.__cause__, Preempted) and stopped.__cause__.step == 3


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


class _Killed(BaseException):
    """Stands in for SIGKILL at one point of a save: nothing after it runs."""


def _sharded_save(last: Path, step: int, kill_at: int | None = None) -> None:
    """What the sharded save does on the file system, two ranks' shards, then Lightning's meta.pt, then the swap;
    `kill_at`: the number of writes, renames and deletions that happen before the kill."""
    done = 0

    def step_of(action, *args):
        nonlocal done
        if done == kill_at:
            raise _Killed
        done += 1
        return action(*args)

    real_replace, real_rmtree = os.replace, shutil.rmtree
    new = staging(last, step)
    try:
        os.replace = lambda a, b: step_of(real_replace, a, b)  # type: ignore[assignment]
        shutil.rmtree = lambda path: step_of(real_rmtree, path)  # type: ignore[assignment]
        clear_staging(last)
        new.mkdir(parents=True)
        for rank in range(2):
            step_of((new / f"__{rank}_0.distcp").write_text, str(step))
        step_of(torch.save, {"global_step": step, "kinject_config": {"step": step}}, new / _METADATA_FILENAME)
        swap_in(new, last)
    finally:
        os.replace, shutil.rmtree = real_replace, real_rmtree


def _whole_step(folder: Path) -> int:
    """The step of a complete sharded checkpoint folder (its meta.pt and every shard agree), else fails."""
    step = torch.load(folder / _METADATA_FILENAME, weights_only=True)["global_step"]
    assert [(folder / f"__{rank}_0.distcp").read_text() for rank in range(2)] == [str(step)] * 2, folder
    return step


@pytest.mark.parametrize("kill_at", range(6))
def test_a_sharded_save_killed_at_any_point_leaves_a_whole_checkpoint_and_the_next_save_cleans_up(tmp_path, kill_at):
    """Killed while writing the shards or meta.pt, between the renames of the swap or before the old folder is
    deleted: what a reader finds (a resumed run, the run folder's check, evaluate.py) is step 4 or step 6 whole,
    never a mix. The next save removes what the kill left."""
    last = tmp_path / "checkpoints" / "last.ckpt"
    _sharded_save(last, 4)
    with pytest.raises(_Killed):
        _sharded_save(last, 6, kill_at=kill_at)
    found = readable(last)
    assert found is not None and _whole_step(found) == (6 if kill_at >= 5 else 4)
    assert previous_config(tmp_path) == {"step": _whole_step(found)}

    _sharded_save(last, 8)
    assert readable(last) == last and _whole_step(last) == 8
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]


def test_a_completed_sharded_save_keeps_one_folder(tmp_path):
    last = tmp_path / "last.ckpt"
    for step in (2, 4):
        _sharded_save(last, step)
    assert _whole_step(last) == 4 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


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
