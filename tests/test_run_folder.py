"""A result says what was trained: a run folder belongs to one config, interruptions are recorded, and
mistakes that used to end in a traceback or a wrong table stop with the key named (exit code 2)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kinject import results
from kinject.cli import train as train_script
from kinject.cli.evaluate import export
from kinject.errors import ConfigError
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
def test_settings_that_do_not_change_what_is_trained_may_differ_on_resume(make_cfg, tmp_path):
    folder = tmp_path / "run"
    train_script.train(make_cfg(output_dir=folder))
    again = make_cfg(
        "data.micro_batch_size=2", "eval.every_n_steps=8", "threads=2", "skip_complete=false", output_dir=folder
    )
    train_script.train(again)
    assert _record(folder)["status"] == "complete"


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
        with pytest.raises(SystemExit):
            train_script.train(make_cfg("trainer.checkpoint.every_n_steps=2", output_dir=folder))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while it shuts down
    record = _record(folder)
    assert record["status"] == "interrupted" and record["step"] == 6
    monkeypatch.setattr(CausalLM, "training_step", original)
    train_script.train(make_cfg("trainer.checkpoint.every_n_steps=2", output_dir=folder))
    assert _record(folder)["status"] == "complete"


def _cli(*args: str, script: str = "train.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


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
