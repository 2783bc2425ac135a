"""A result says what was trained: a run folder belongs to one config, interruptions are recorded, and
mistakes that used to end in a traceback or a wrong table stop with the key named (exit code 2)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kinject import results
from kinject.cli import train as train_script
from kinject.cli.evaluate import export
from kinject.errors import ConfigError
from kinject.run.folder import claim
from kinject.training.lightning_module import CausalLM
from tests.conftest import ROOT, TINY


def _record(folder: Path) -> dict:
    return results.read(folder / "results.json")


@pytest.mark.slow
def test_a_complete_folder_is_not_skipped_for_other_settings(make_cfg, tmp_path):
    folder = tmp_path / "run"
    train_script.train(make_cfg(output_dir=folder))
    stamp = (folder / "results.json").stat().st_mtime_ns
    for overrides in (
        ["infusion.freq=8"],
        ["skip_complete=false", "infusion.freq=8"],
        ["model=small", "infusion.freq=100000"],
    ):
        with pytest.raises(
            ConfigError,
            match=r"paths.output_dir: .* differs in .*infusion.freq: 4 -> (8|100000).*"
            r"overwrite=true",
        ):
            train_script.train(make_cfg(*overrides, output_dir=folder))
    assert (folder / "results.json").stat().st_mtime_ns == stamp
    assert _record(folder)["config"]["infusion"]["freq"] == 4
    assert train_script.train(make_cfg(output_dir=folder)) == _record(folder)["metrics"]["memorization/acc_token"]


@pytest.mark.slow
def test_a_cut_off_run_is_not_resumed_by_other_settings_and_overwrite_starts_clean(make_cfg, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    original = CausalLM.training_step

    def crash_at_step_5(self, batch, batch_idx):
        if self.global_step == 5:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CausalLM, "training_step", crash_at_step_5)
    with pytest.raises(RuntimeError):
        train_script.train(make_cfg("infusion.freq=16", "trainer.checkpoint.every_n_steps=2", output_dir=folder))
    monkeypatch.setattr(CausalLM, "training_step", original)
    assert (folder / "checkpoints" / "last.ckpt").exists()

    (folder / "results.json").unlink()  # the checkpoint alone still says what was trained
    with pytest.raises(ConfigError, match=r"infusion.freq: 16 -> 2"):
        train_script.train(make_cfg("infusion.freq=2", output_dir=folder))

    train_script.train(make_cfg("infusion.freq=2", "overwrite=true", output_dir=folder))
    record = _record(folder)
    assert record["status"] == "complete" and record["infusion"]["freq"] == 2
    assert record["fingerprint"] != ""


@pytest.mark.slow
def test_settings_that_do_not_change_what_is_trained_may_differ_on_resume_and_a_complete_run_is_kept(
    make_cfg, tmp_path, cache_dir
):
    """A crashed run resumes under another micro-batch, evaluation interval and thread count. Once complete,
    `skip_complete=false` would train nothing and only rewrite its record: refused with what to do instead."""
    folder = tmp_path / "run"
    crash = ("+callbacks.crash._target_=tests.helpers.CrashAt", "+callbacks.crash.step=5")
    with pytest.raises(RuntimeError, match="simulated crash at step 5"):
        train_script.train(make_cfg(*crash, "trainer.checkpoint.every_n_steps=2", output_dir=folder))
    again = ("data.micro_batch_size=2", "eval.every_n_steps=8", "threads=2")
    train_script.train(make_cfg(*again, output_dir=folder))
    record = _record(folder)
    assert record["status"] == "complete" and (record["run"]["start_step"], record["run"]["steps_trained"]) == (4, 28)

    written = (folder / "results.json").read_bytes()
    done = _cli(*TINY, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={folder}", *again, "skip_complete=false")
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        f"skip_complete: expected true for {folder}, which holds a complete run of these settings: its checkpoint "
        "is at its last step (32), so running it again would train nothing" in done.stdout
    )
    assert (
        "overwrite=true" in done.stdout
        and f"python evaluate.py ckpt={folder / 'checkpoints' / 'last.ckpt'}" in done.stdout
    )
    assert (folder / "results.json").read_bytes() == written
    assert train_script.train(make_cfg(*again, output_dir=folder)) == record["metrics"]["memorization/acc_token"]


@pytest.mark.slow
def test_an_interrupted_run_is_recorded_with_its_step_and_resumes(make_cfg, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    original = CausalLM.training_step

    def ctrl_c_at_step_6(self, batch, batch_idx):
        if self.global_step == 6:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CausalLM, "training_step", ctrl_c_at_step_6)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stopped:
            train_script.train(make_cfg("trainer.checkpoint.every_n_steps=2", output_dir=folder))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    assert stopped.value.code == 128 + signal.SIGINT
    record = _record(folder)
    assert record["status"] == "interrupted" and record["step"] == 6
    assert record["error"].startswith("SIGINT: stopped at step 6; the same command resumes from")
    assert record["error"].endswith("last.ckpt at step 6 of 32")
    monkeypatch.setattr(CausalLM, "training_step", original)
    train_script.train(make_cfg("trainer.checkpoint.every_n_steps=2", output_dir=folder))
    resumed = _record(folder)
    assert resumed["status"] == "complete"
    assert (resumed["run"]["start_step"], resumed["run"]["steps_trained"]) == (6, 32 - 6), "resumed at step 6"


def _cli(*args: str, script: str = "train.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_damaged_checkpoint_through_the_cli_exits_2_naming_it_and_writes_no_record(tmp_path, cache_dir):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(os.urandom(4096))
    done = _cli(*TINY, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{last} cannot: it is not a checkpoint written by torch.save" in done.stdout
    assert "add overwrite=true" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_an_added_key_that_nothing_reads_is_refused_with_the_nearest_one(tmp_path, cache_dir):
    common = (*TINY, f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path}")
    done = _cli(*common, "+infusion.frq=8")
    assert done.returncode == 2
    assert "infusion.frq: expected a setting the config knows" in done.stderr + done.stdout
    assert "did you mean infusion.freq=" in done.stderr + done.stdout
    done = _cli(*common, "+trainer.limit_val_batchez=1")
    assert done.returncode == 2 and "did you mean trainer.limit_val_batches=" in done.stderr + done.stdout
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=local"], "data.files: expected a value: this setting has no default"),
        (["knowledge=wikidata"], "knowledge.files: expected a value: this setting has no default"),
    ],
)
def test_a_setting_without_default_is_named(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train_script.train(make_cfg(*overrides))


def test_a_gpu_trainer_without_a_gpu_is_named(make_cfg):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=r"trainer.accelerator: expected a machine with a CUDA GPU.*trainer=cpu"):
        train_script.train(make_cfg("trainer=gpu"))


@pytest.mark.slow
def test_evaluate_without_a_checkpoint_or_with_another_file_names_ckpt(tmp_path):
    done = _cli(script="evaluate.py")
    assert (
        done.returncode == 2 and "ckpt: expected a checkpoint file or an exported folder" in done.stderr + done.stdout
    )
    other = tmp_path / "notes.ckpt"
    other.write_text("not a checkpoint")
    done = _cli(f"ckpt={other}", script="evaluate.py")
    assert done.returncode == 2 and "ckpt: expected a checkpoint written by train.py" in done.stderr + done.stdout
    assert "weights_only" not in done.stderr + done.stdout


@pytest.mark.slow
def test_export_refuses_a_folder_that_holds_files(make_cfg, tmp_path):
    cfg = make_cfg()
    train_script.train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="export: expected a new or empty folder.*overwrite=true"):
        export(ckpt, folder)
    assert (folder / "mine.txt").read_text() == "keep me"
    assert (export(ckpt, folder, overwrite=True) / "config.json").exists()


@pytest.mark.slow
def test_fit_law_refuses_a_folder_as_report_path(tmp_path):
    done = _cli(str(tmp_path), "--out", str(tmp_path), script="fit_law.py")
    assert done.returncode == 2 and "--out: expected a file path for the JSON report" in done.stderr


@pytest.mark.slow
def test_a_setting_added_since_a_run_was_written_does_not_refuse_its_folder(make_cfg, tmp_path):
    folder = tmp_path / "run"
    train_script.train(make_cfg(output_dir=folder))
    record = results.RunRecord.read(folder / "results.json")
    del record.data["config"]["infusion"]["budget"]  # as written by a version that had no infusion.budget
    record.write()
    assert train_script.train(make_cfg(output_dir=folder)) == record["metrics"]["memorization/acc_token"]


def _checkpoint_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "whole.ckpt"
    torch.save({"global_step": 4, "state_dict": {"w": torch.zeros(256)}, "kinject_config": {}}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda whole: os.urandom(4096), "not a checkpoint written by torch.save"),
        (lambda whole: whole[: len(whole) // 2], "not a checkpoint written by torch.save"),
        (lambda whole: b"", "not a checkpoint written by torch.save"),
        (lambda whole: None, "meta.pt is missing"),
    ],
    ids=["random-bytes", "truncated", "empty", "sharded-without-meta"],
)
@pytest.mark.parametrize("with_record", [False, True], ids=["alone", "with-results"])
def test_a_damaged_checkpoint_in_the_run_folder_is_named_with_the_ways_out(tmp_path, damage, why, with_record):
    """Found before anything is built, also when the results file says what the folder holds (fit would read the
    checkpoint to resume it); overwrite=true deletes it."""
    folder = tmp_path / "run"
    last = folder / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    damaged = damage(_checkpoint_bytes(tmp_path))
    if damaged is None:
        last.mkdir()
        (last / "__0_0.distcp").write_bytes(b"shard")
    else:
        last.write_bytes(damaged)
    if with_record:
        results.RunRecord.start(folder, config={"seed": 0}).interrupt(4, "SIGTERM")
    with pytest.raises(ConfigError) as refused:
        claim(folder, {"seed": 0}, overwrite=False)
    message = str(refused.value)
    assert message.startswith(f"paths.output_dir: expected a folder whose run can be read; {last} cannot: ")
    assert why in message and "use a new folder" in message and "add overwrite=true" in message
    if with_record:  # said what the folder holds: a run that starts clean replaces the checkpoint unread
        claim(folder, {"seed": 0}, overwrite=False, resume=False)
    claim(folder, {"seed": 0}, overwrite=True)
    assert not last.parent.exists() and not (folder / "results.json").exists()


@pytest.mark.parametrize(
    "content, why",
    [
        ('{"schema": "kinject.results/1", "status": "comp', "it is not valid JSON (cut off or edited)"),
        ("\x00\x01 not json", "it is not valid JSON (cut off or edited)"),
        ('{"schema": "kinject.results/0", "status": "complete"}', "expected a kinject.results/1 results file"),
        ('{"schema": "kinject.results/1", "status": "complete"}', "it holds no 'config'"),
        ("[1, 2]", "expected a kinject.results/1 results file"),
    ],
    ids=["truncated", "garbled", "other-version", "no-config", "not-an-object"],
)
def test_a_results_file_that_cannot_be_read_is_named_with_the_ways_out(tmp_path, content, why):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(content)
    with pytest.raises(ConfigError) as refused:
        claim(folder, {"seed": 0}, overwrite=False)
    message = str(refused.value)
    assert message.startswith(f"paths.output_dir: expected a folder whose run can be read; {folder / 'results.json'}")
    assert why in message and "add overwrite=true" in message
    claim(folder, {"seed": 0}, overwrite=True)
    assert not (folder / "results.json").exists()


def test_overwrite_empties_the_log_of_the_previous_run(tmp_path, caplog):
    """Hydra's file handler appends to RUN/train.log: the lines of the run that overwrite=true deletes go with it."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text("{}")
    log_file = folder / "train.log"
    log_file.write_text("[old run] step 32/32\n")
    handler = logging.FileHandler(log_file)
    caplog.set_level(logging.INFO, logger="kinject")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        claim(folder, {"seed": 0}, overwrite=True)
        logging.getLogger("kinject").warning("the new run")
    finally:
        root.removeHandler(handler)
        handler.close()
    assert "old run" not in log_file.read_text()
    assert "overwrite=true: deleted the results, checkpoints and log of the run" in log_file.read_text()
    assert log_file.read_text().endswith("the new run\n")


@pytest.mark.slow
def test_a_run_cut_off_while_it_is_recorded_resumes_at_its_last_step_with_its_training_losses(
    make_cfg, tmp_path, monkeypatch
):
    """Ctrl-C (or a signal) after the last step, while the record is written: the same command resumes at the
    last step and trains none; the training losses the cut-off process logged come back from the checkpoint."""
    folder = tmp_path / "run"
    write, cut_off_with = results.RunRecord.complete, {}

    def cut_off(self, **sections):
        cut_off_with.update(sections["metrics"])
        raise KeyboardInterrupt

    monkeypatch.setattr(results.RunRecord, "complete", cut_off)
    with pytest.raises(SystemExit) as stopped:
        train_script.train(make_cfg(output_dir=folder))
    assert stopped.value.code == 128 + signal.SIGINT
    assert (_record(folder)["status"], _record(folder)["step"]) == ("interrupted", 32)
    monkeypatch.setattr(results.RunRecord, "complete", write)
    train_script.train(make_cfg(output_dir=folder))
    record = _record(folder)
    assert record["status"] == "complete" and (record["run"]["start_step"], record["run"]["steps_trained"]) == (32, 0)
    assert {"train/loss", "train/loss_injected", "train/loss_background"} <= set(record["metrics"])
    assert record["metrics"] == cut_off_with


def test_a_skipped_run_without_the_metric_asked_for_names_it(make_cfg, tmp_path):
    """A complete record of a version that had no such metric: named, with the metrics it has and what to do."""
    cfg = make_cfg(output_dir=tmp_path / "run")
    config = OmegaConf.to_container(cfg, resolve=True)
    results.RunRecord.start(tmp_path / "run", config=config).complete(metrics={"heldout/loss": 3.0})
    with pytest.raises(
        ConfigError,
        match=r"metric: expected a metric that the complete run in .* recorded, one of "
        r"\['heldout/loss'\], got 'memorization/acc_token'. score it again .*or add overwrite=true",
    ):
        train_script.train(cfg)
