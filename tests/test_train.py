"""End to end through Hydra's compose API and the real CLI: train, results file, re-evaluation, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException

from kinject import results
from kinject.cli import train as train_script
from kinject.cli.evaluate import evaluate
from kinject.training.lightning_module import CausalLM
from tests.conftest import ROOT, TINY


def _results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


@pytest.mark.slow
def test_train_writes_results_and_evaluate_reproduces_them(make_cfg, tmp_path):
    cfg = make_cfg("eval.every_n_steps=16", "eval.at_start=true")
    metric = train_script.train(cfg)
    out = Path(cfg.paths.output_dir)
    record = _results(out)
    assert record["schema"] == "kinject.results/1" and record["status"] == "complete"
    assert record["metrics"][cfg.metric] == metric
    assert record["infusion"]["freq"] == 4 and record["infusion"]["num_facts"] == 24
    assert 0 < record["infusion"]["injected_share"] < 1
    assert record["model"]["params_non_embedding"] < record["model"]["params_total"]
    assert [point["step"] for point in record["curve"]] == [0, 16, 32]
    assert len(record["items"]["memorization"]["correct_token"]) == 24
    assert {"memorization", "extraction", "background"} <= set(record["items"])
    assert record["config"]["infusion"]["freq"] == 4

    again = evaluate(out / "checkpoints" / "last.ckpt")
    for key, value in again.metrics.items():
        assert value == pytest.approx(record["metrics"][key], abs=1e-6), key
    assert again.items["memorization"]["correct_token"] == record["items"]["memorization"]["correct_token"]

    other = evaluate(out / "checkpoints" / "last.ckpt", suites=["memorization", "memorization_in_sequence"])
    assert set(other.items) == {"memorization", "memorization_in_sequence"}
    assert other.metrics["memorization/acc_token"] == again.metrics["memorization/acc_token"]


@pytest.mark.slow
def test_a_crashed_run_resumes_to_the_same_result_as_an_uninterrupted_one(make_cfg, tmp_path, monkeypatch):
    overrides = ("tokens=8192", "trainer.checkpoint.every_n_steps=2", "infusion.freq=2")
    straight = make_cfg(*overrides, output_dir=tmp_path / "straight")
    train_script.train(straight)

    crashed = make_cfg(*overrides, output_dir=tmp_path / "crashed")
    original = CausalLM.training_step

    def crash_at_step_3(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CausalLM, "training_step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_script.train(crashed)
    failed = _results(tmp_path / "crashed")
    assert failed["status"] == "failed" and "simulated crash" in failed["error"] and "test_train.py" in failed["where"]
    monkeypatch.setattr(CausalLM, "training_step", original)
    train_script.train(crashed)

    a, b = _results(tmp_path / "straight"), _results(tmp_path / "crashed")
    assert (a["run"]["start_step"], a["run"]["steps_trained"]) == (0, a["budget"]["steps"])
    assert (b["run"]["start_step"], b["run"]["steps_trained"]) == (2, b["budget"]["steps"] - 2), "resumed at step 2"
    assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-5)
    weights = [
        torch.load(p / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for p in (tmp_path / "straight", tmp_path / "crashed")
    ]
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-5), key


@pytest.mark.slow
def test_cli_multirun_over_frequencies(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "train.py",
        "-m",
        *TINY,
        "infusion.freq=0,2",
        "optim.lr=0.002",
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={sweep}",
        "paths.output_dir=${hydra:runtime.output_dir}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = {r["infusion"]["freq"]: r for r in (json.loads(p.read_text()) for p in sweep.rglob("results.json"))}
    assert set(records) == {0, 2}
    assert records[0]["infusion"]["injected_tokens"] == 0 < records[2]["infusion"]["injected_tokens"]
    assert records[0]["run"]["output_dir"] != records[2]["run"]["output_dir"]
    header, rows = results.table([sweep])
    assert [row[header.index("freq")] for row in rows] == [0, 2]
    assert [rows[1][header.index(key)] for key in ("budget_mode", "packing", "window", "lr")] == [
        "fixed_total",
        "scattered",
        "0.0-1.0",
        0.002,
    ]
    assert rows[1][header.index("memorization/acc_token")] == records[2]["metrics"]["memorization/acc_token"]

    rescored = evaluate(
        Path(records[2]["run"]["output_dir"]) / "checkpoints" / "last.ckpt", suites=["memorization_in_sequence"]
    )
    (Path(records[2]["run"]["output_dir"]) / "in_sequence.json").write_text(json.dumps({"metrics": rescored.metrics}))
    header, rows = results.table([sweep], metrics_from="in_sequence.json")
    assert [row[header.index("freq")] for row in rows] == [2]
    assert (
        rows[0][header.index("memorization_in_sequence/acc_token")]
        == rescored.metrics["memorization_in_sequence/acc_token"]
    )
    assert "memorization/acc_token" not in header


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_sweep_and_a_rerun_redoes_only_it(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "train.py",
        "-m",
        *TINY,
        "infusion.freq=2,999",
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={sweep}",
        "paths.output_dir=${hydra:runtime.output_dir}",
    ]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 2 and "Traceback" not in first.stderr  # a bad value, as in a single run
    assert "1 job(s) failed" in first.stdout and "infusion.freq=999" in first.stdout
    assert "ConfigError: infusion.freq" in first.stdout
    done = sweep / "experiment=smoke,infusion.freq=2" / "results.json"
    assert json.loads(done.read_text())["status"] == "complete"
    stamp = done.stat().st_mtime_ns

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "already complete, skipped" in second.stdout + second.stderr
    assert "1 job(s) failed" in second.stdout
    assert done.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_paper_sizes_resolve_without_training():
    done = subprocess.run(
        [sys.executable, "train.py", "model=562m", "infusion.freq=100", "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "hidden_size: 1280" in done.stdout and "freq: 100" in done.stdout


def test_unknown_model_name_is_a_clear_error():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        with pytest.raises(MissingConfigException, match="model/huge"):
            compose("config", overrides=["model=huge"])


@pytest.mark.slow
def test_bad_config_exits_before_training_with_the_key_named(tmp_path, cache_dir):
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            *TINY,
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}",
            "infusion.freq=-3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "infusion.freq: expected an integer >= 0, got -3" in done.stdout + done.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_export_round_trip_loads_in_plain_transformers(make_cfg, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kinject.cli.evaluate import export

    cfg = make_cfg()
    train_script.train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    folder = export(ckpt, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    module = CausalLM(**torch.load(ckpt, weights_only=True)["hyper_parameters"])
    module.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    ids = torch.tensor([tokenizer("The birthplace of")["input_ids"]])
    assert torch.allclose(model(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits, atol=1e-5)
    assert evaluate(folder).metrics == pytest.approx(evaluate(ckpt).metrics, abs=1e-6)


@pytest.mark.slow
def test_each_job_gets_its_own_offline_wandb_run_and_finishes_it(make_cfg, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for freq in (1, 2):
        cfg = make_cfg("logger=wandb", f"infusion.freq={freq}", output_dir=tmp_path / f"f{freq}")
        train_script.train(cfg)
        assert wandb.run is None
        assert len(list((tmp_path / f"f{freq}" / "wandb").glob("offline-run-*"))) == 1


def _saved_steps(make_cfg, tmp_path, name: str, *overrides: str) -> list[int]:
    log = tmp_path / f"{name}.saves"
    cfg = make_cfg(
        *overrides,
        "+callbacks.saves._target_=tests.helpers.RecordSaves",
        f"+callbacks.saves.path={log}",
        output_dir=tmp_path / name,
    )
    train_script.train(cfg)
    return [int(line) for line in log.read_text().split()]


@pytest.mark.slow
def test_last_checkpoint_by_steps_or_by_wall_time_and_always_at_the_end(make_cfg, tmp_path):
    """32 steps of 2 micro-batches each: one save per due optimizer step, never one per micro-batch."""
    assert _saved_steps(make_cfg, tmp_path, "steps", "trainer.checkpoint.every_n_steps=10") == [10, 20, 30, 32]
    by_time = ("trainer.checkpoint.every_n_steps=null", "trainer.checkpoint.every_minutes=")
    assert _saved_steps(make_cfg, tmp_path, "hour", by_time[0], by_time[1] + "60") == [32]
    assert _saved_steps(make_cfg, tmp_path, "always", by_time[0], by_time[1] + "1e-9") == list(range(1, 33))


@pytest.mark.slow
def test_evaluation_runs_under_the_training_precision(make_cfg):
    """A bf16-mixed run is scored under bf16 autocast inside fit (not in fp32 after it): evaluate.py under the
    run's precision reproduces it, and fp32 scores differ."""
    cfg = make_cfg("trainer.precision=bf16-mixed", "eval.suites=[memorization]")
    train_script.train(cfg)
    out = Path(cfg.paths.output_dir)
    record = _results(out)
    ckpt = out / "checkpoints" / "last.ckpt"
    same = evaluate(ckpt, device="cpu")
    assert same.items["memorization"]["logprob"] == record["items"]["memorization"]["logprob"]
    assert same.metrics["heldout/loss"] == pytest.approx(record["metrics"]["heldout/loss"], abs=1e-6)
    fp32 = evaluate(ckpt, device="cpu", precision="32-true")
    assert fp32.items["memorization"]["logprob"] != record["items"]["memorization"]["logprob"]


def test_progress_bar_follows_the_terminal_unless_set(make_cfg, monkeypatch):
    from kinject.run.experiment import prepare

    cfg = make_cfg("trainer.enable_progress_bar=null")
    experiment = prepare(cfg)
    for tty in (False, True):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        trainer = train_script.build_trainer(cfg, experiment, [], [])
        assert (trainer.progress_bar_callback is not None) == tty


@pytest.mark.slow
def test_show_batch_cli_prints_a_step_without_a_hydra_run(cache_dir):
    """Composed outside a Hydra run, as `kinject-show-batch` does: no interpolation may need one."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kinject.run.show_batch",
            "step=1",
            "experiment=smoke",
            "logger=none",
            f"paths.cache_dir={cache_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("step 1: sequences 8 to 15")


@pytest.mark.gpu
def test_a_run_on_the_gpu_trains_in_mixed_precision_and_evaluate_reproduces_it_there(make_cfg):
    cfg = make_cfg("trainer=gpu", "eval.every_n_steps=16")
    train_script.train(cfg)
    record = _results(Path(cfg.paths.output_dir))
    assert record["status"] == "complete" and record["config"]["trainer"]["precision"] in ("bf16-mixed", "16-mixed")
    again = evaluate(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", device="cuda")
    assert again.metrics["memorization/acc_token"] == pytest.approx(
        record["metrics"]["memorization/acc_token"], abs=1e-3
    )
