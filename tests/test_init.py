"""Continued pretraining (`model.init`), offline on CPU: a tiny Llama saved in a temporary folder is the init."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from kinject import init as inits
from kinject.cli import train as train_script
from kinject.cli.evaluate import evaluate, export
from kinject.errors import ConfigError
from kinject.law.runs import load_runs, to_groups
from kinject.run.experiment import prepare
from kinject.validation import check_additions, validate
from tests.conftest import ROOT, TINY

MAX_POSITIONS = 256


@pytest.fixture(scope="module")
def init_folder(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A tiny Llama unlike kinject's own models (tied embeddings, grouped-query attention, another RMSNorm epsilon
    and RoPE theta) with the smoke run's tokenizer, written by save_pretrained."""
    folder = tmp_path_factory.mktemp("init")
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"paths.cache_dir={cache_dir}", f"paths.output_dir={folder}/x"])
    tokenizer = prepare(cfg).tokenizer
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _from_init(make_cfg, folder: Path | str, *overrides: str, output_dir: Path | None = None):
    cfg = make_cfg("model=init", f"model.init={folder}", "eval.at_start=true", *overrides, output_dir=output_dir)
    validate(cfg)
    return cfg


def test_the_architecture_and_tokenizer_are_the_inits_and_training_starts_from_its_weights(make_cfg, init_folder):
    cfg = _from_init(make_cfg, init_folder, "model.pretrained_tokens=1e9")
    assert (cfg.model.hidden_size, cfg.model.num_kv_heads, cfg.model.tie_embeddings) == (32, 2, True)
    assert (cfg.model.rms_norm_eps, cfg.model.rope_theta, cfg.model.name) == (1e-5, 50000.0, str(init_folder))
    assert (cfg.data.tokenizer.kind, cfg.data.tokenizer.name) == ("hub", str(init_folder))
    experiment = prepare(cfg)
    module = train_script.build_module(cfg, experiment)
    saved = load_file(init_folder / "model.safetensors")
    state = module.model.state_dict()
    assert saved and all(torch.equal(state[key], value) for key, value in saved.items())
    assert module.model.training and all(p.dtype == torch.float32 for p in module.model.parameters())
    assert module.model.get_output_embeddings().weight is module.model.get_input_embeddings().weight
    resumed = train_script.build_module(cfg, experiment, from_init=False)
    assert not all(torch.equal(resumed.model.state_dict()[k], v) for k, v in saved.items()), "a resume reads no init"
    model, budget = inits.recorded(cfg, 1000)
    assert model == {"init": str(init_folder), "pretrained_tokens": 10**9}
    assert budget == {"tokens_with_pretraining": 10**9 + 1000}


def test_a_model_config_of_the_init_passes_and_a_conflicting_size_is_refused_naming_it(make_cfg, init_folder):
    _from_init(make_cfg, init_folder, "model.hidden_size=32", "model.name=mine")
    with pytest.raises(ConfigError, match=r"model.hidden_size: expected 32, the init's .* got 64.*model=init"):
        _from_init(make_cfg, init_folder, "model.hidden_size=64")
    with pytest.raises(ConfigError, match=r"model.hidden_size: expected 32, the init's"):
        validate(make_cfg("model=tiny", f"model.init={init_folder}"))
    with pytest.raises(ConfigError, match=r"data.seq_len: expected at most 256, the init's max_position_embeddings"):
        _from_init(make_cfg, init_folder, "data.seq_len=512")
    with pytest.raises(ConfigError, match=r"model.init: expected a value"):
        validate(make_cfg("model=init"))


def test_another_tokenizer_is_refused_naming_the_key(make_cfg, init_folder):
    cfg = _from_init(make_cfg, init_folder)
    with pytest.raises(ConfigError, match=r"data.tokenizer.kind: expected no tokenizer setting with model.init"):
        check_additions(cfg, ["model=init", "data.tokenizer.kind=bpe"])
    check_additions(make_cfg(), ["data.tokenizer.kind=bpe"])


def test_what_cannot_be_an_init_is_refused_in_one_line(make_cfg, init_folder, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"model.init: .*no folder .*nowhere"):
        _from_init(make_cfg, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"model.init: .*holds no config.json"):
        _from_init(make_cfg, tmp_path / "empty")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match=r"model.init: expected .*Llama-architecture.*model_type 'gpt2'"):
        _from_init(make_cfg, gpt2)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: the env var is too late
    with pytest.raises(ConfigError, match=r"model.init: .*the hub did not give it .*hf download"):
        _from_init(make_cfg, "nobody-kinject/no-such-model")

    def gated(*args, **kwargs):
        raise OSError("You are trying to access a gated repo. Make sure to have access to it.")

    monkeypatch.setattr(inits.AutoConfig, "from_pretrained", gated)
    with pytest.raises(ConfigError, match=r"model.init: .*the hub refused it: meta-llama/Llama-3.2-1B is gated"):
        _from_init(make_cfg, "meta-llama/Llama-3.2-1B")


def test_an_init_missing_weights_is_refused(make_cfg, init_folder, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(init_folder, partial)
    weights = load_file(partial / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    cfg = _from_init(make_cfg, partial)
    with pytest.raises(ConfigError, match=r"model.init: expected a checkpoint holding every weight.*model.norm.weight"):
        train_script.build_module(cfg, prepare(cfg))


def _write_run(root: Path, name: str, init: str | None, freq: int) -> None:
    folder = root / f"{name}-{init}-{freq}"
    folder.mkdir(parents=True)
    outcomes = [1, 0, 1, 1]
    payload = {
        "schema": "kinject.results/1",
        "status": "complete",
        "run": {"name": "r", "sweep": "s", "seed": 0, "output_dir": str(folder)},
        "model": {"name": name, "params_total": 100, "params_non_embedding": 50, "init": init},
        "budget": {"tokens": 1000, "seq_len": 8, "batch_size": 1, "steps": 125},
        "infusion": {"freq": freq, "format": "statement", "paraphrase": "duplicate", "num_facts": 4},
        "metrics": {"memorization/acc_token": 0.75},
        "items": {"memorization": {"fact_id": [0, 1, 2, 3], "correct_token": outcomes}},
        "curve": [],
        "config": {"model": {"name": name, "init": init}, "data": {"tokenizer": {"name": init or "bpe"}}},
    }
    (folder / "results.json").write_text(json.dumps(payload))


def test_runs_from_different_inits_never_pool_and_a_ladder_of_inits_is_one_condition(tmp_path):
    for init in (None, "a/one", "b/two"):
        for freq in (0, 4):
            _write_run(tmp_path, "smol", init, freq)
    groups = to_groups(load_runs([tmp_path]))
    assert sorted(g.model for g in groups) == ["smol", "smol from a/one", "smol from b/two"]
    conditions = {g.model: dict(g.condition) for g in groups}
    assert conditions["smol from a/one"] == conditions["smol from b/two"] == {"start": "init"}
    assert conditions["smol"] == {"start": "random"}


@pytest.mark.slow
def test_a_sweep_over_f_from_an_init_evaluates_step_0_as_evaluate_scores_the_init_and_fit_law_reads_it(
    make_cfg, init_folder, tmp_path
):
    for freq in (0, 2, 4):
        train_script.train(
            _from_init(make_cfg, init_folder, f"infusion.freq={freq}", "tokens=4096", output_dir=tmp_path / f"f{freq}")
        )
    record = json.loads((tmp_path / "f4" / "results.json").read_text())
    assert [point["step"] for point in record["curve"]] == [0]
    assert record["model"]["init"] == str(init_folder) and record["status"] == "complete"
    baseline = evaluate(init_folder, device="cpu", facts=tmp_path / "f4")
    for key, value in baseline.metrics.items():
        assert record["curve"][0][key] == pytest.approx(value, abs=1e-6), key
    groups = to_groups(load_runs([tmp_path]))
    assert len(groups) == 1 and groups[0].model == str(init_folder)
    assert sorted(groups[0].curve.freq.tolist()) == [0, 2, 4]


@pytest.mark.slow
def test_evaluate_scores_a_checkpoint_its_export_and_the_export_as_any_model_alike(make_cfg, tmp_path):
    cfg = make_cfg("tokens=4096")
    train_script.train(cfg)
    run = Path(cfg.paths.output_dir)
    ckpt = run / "checkpoints" / "last.ckpt"
    folder = export(ckpt, tmp_path / "hf")
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain, ignore=shutil.ignore_patterns("kinject_config.json", "lm_eval"))
    expected = evaluate(ckpt, device="cpu")
    for scored in (evaluate(folder, device="cpu"), evaluate(plain, device="cpu", facts=run)):
        for key, value in expected.metrics.items():
            assert scored.metrics[key] == pytest.approx(value, abs=1e-6), key
        for suite, record in expected.items.items():
            if "logprob" in record:
                assert np.allclose(scored.items[suite]["logprob"], record["logprob"], atol=1e-4), suite
            else:
                assert scored.items[suite]["answer"] == record["answer"], suite
    with pytest.raises(ConfigError, match=r"ckpt: expected a checkpoint file .*add facts=RUN_FOLDER"):
        evaluate(plain, device="cpu")
    with pytest.raises(ConfigError, match=r"facts: expected a kinject run"):
        evaluate(plain, device="cpu", facts=tmp_path / "nothing")


@pytest.mark.slow
def test_a_resumed_run_from_an_init_reads_no_init_weights_and_evaluates_step_0_once(make_cfg, init_folder, tmp_path):
    folder = tmp_path / "init"
    shutil.copytree(init_folder, folder)
    every_2 = ("trainer.checkpoint.every_n_steps=2", "eval.every_n_steps=4", "tokens=4096")
    crash = ("+callbacks.crash._target_=tests.helpers.CrashAt", "+callbacks.crash.step=5")
    crashing = _from_init(make_cfg, folder, *every_2, *crash)
    with pytest.raises(RuntimeError, match="simulated crash at step 5"):
        train_script.train(crashing)
    (folder / "model.safetensors").unlink()
    train_script.train(_from_init(make_cfg, folder, *every_2))
    record = json.loads((Path(crashing.paths.output_dir) / "results.json").read_text())
    assert record["status"] == "complete" and [p["step"] for p in record["curve"]] == [0, 4, 8]


@pytest.mark.slow
def test_fsdp_ranks_start_from_the_init_read_by_rank_zero(init_folder, cache_dir, tmp_path):
    """Two gloo ranks: rank 0 reads the init, rank 1 builds on the meta device and receives its shards; the step-0
    evaluation is the init's, as evaluate.py scores it."""
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            *TINY,
            "trainer=fsdp_cpu",
            "data.micro_batch_size=2",
            "model=init",
            f"model.init={init_folder}",
            "eval.at_start=true",
            "tokens=2048",
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    step_0 = json.loads((tmp_path / "results.json").read_text())["curve"][0]
    baseline = evaluate(init_folder, device="cpu", facts=tmp_path).metrics
    assert step_0["step"] == 0
    for key in ("memorization/acc_sum", "memorization/gold_logprob", "heldout/loss"):
        assert step_0[key] == pytest.approx(baseline[key], abs=1e-5), key
