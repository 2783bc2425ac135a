"""The plan of a sweep, on CPU and offline: every job of the paper's preset with its cost, and the jobs a run
would refuse, refused by the run's own rules."""

from __future__ import annotations

import re
import subprocess
from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from kinject import plan
from kinject.budget import Budget
from kinject.cli.train import build_trainer
from kinject.errors import ConfigError
from kinject.fingerprint import settings
from kinject.run.experiment import prepare
from kinject.training.distributed import FSDP2Strategy
from kinject.training.model import ModelSpec, flops_per_token
from tests.conftest import ROOT, console_script

SIZES = ("137m", "300m", "562m", "1.05b", "3b")


def _rows(out: str) -> list[list[str]]:
    """size, F, tokens, injected, steps, GPU-h, wall-h, mem-GB, requeues, refused: the cells of a job's row (fewer
    when some are blank)."""
    return [line.split(maxsplit=9) for line in out.splitlines() if re.match(r"^\S+\s+\d+\s+[\d.]+B", line)]


@pytest.mark.slow
def test_the_paper_preset_is_30_jobs_with_tokens_steps_and_gpu_hours_and_their_total(capsys):
    assert plan.main(["experiment=paper"]) == 0
    out = capsys.readouterr().out
    assert "H100 SXM, 989 TFLOP/s dense bf16, at 40% MFU; 8 GPU(s) per job" in out
    assert "13 tokens per injected statement" in out and "knowledge.num_facts=10000" in out
    assert "refused over 90% of 80 GB; requeues: runs of hydra.launcher.timeout_min=1440 min beyond the first" in out
    rows = _rows(out)
    grid = [(size, freq) for size in SIZES for freq in (10, 50, 100, 200, 500, 1000)]
    assert [(row[0], int(row[1])) for row in rows] == grid
    memory = {row[0]: (row[7], row[8]) for row in rows}
    assert memory == {
        "137m": ("32.5", "0"),
        "300m": ("53.2", "0"),
        "562m": ("46.7", "0"),
        "1.05b": ("43.3", "0"),
        "3b": ("55.0", "4"),
    }, "GB per GPU and requeues of each size"
    size, freq, tokens, share, steps, hours, wall, _, _ = rows[0]
    assert (tokens, steps) == ("2.70B", "2,574")  # 2.7e9 tokens in steps of 512 sequences x 2048 tokens
    assert float(share.rstrip("%")) == pytest.approx(100 * 10_000 * 10 * 13 / (2574 * 512 * 2048), rel=1e-2)
    spec = ModelSpec.from_config({**OmegaConf.load(ROOT / "conf" / "model" / "137m.yaml")})
    expected = flops_per_token(spec, 32000, 2048) * 2574 * 512 * 2048 / (0.4 * 989e12) / 3600
    assert float(hours) == pytest.approx(expected, abs=0.05) and float(wall) == pytest.approx(expected / 8, abs=0.05)
    config = OmegaConf.to_container(plan.compose_job(["experiment=paper", "model=3b"]), resolve=False)
    assert "tokens" in settings(config)
    assert not any(key.startswith(("tokens_per_model", "fit_per_model")) for key in settings(config))
    total = re.search(r"total: 30 jobs to run, 0 refused: ([\d,]+) GPU-hours", out)
    hours = [float(row[5].replace(",", "")) for row in rows]
    assert float(total.group(1).replace(",", "")) == pytest.approx(sum(hours), abs=1)


def test_jobs_whose_injection_does_not_fit_are_refused_with_the_reason(capsys):
    assert plan.main(["experiment=paper", "model=137m", "tokens=20_000_000", "--gpu", "H200", "--mfu", "0.5"]) == 0
    out = capsys.readouterr().out
    rows = {int(row[1]): row for row in _rows(out)}
    assert sorted(rows) == [10, 50, 100, 200, 500, 1000]
    for freq in (200, 500, 1000):
        assert f"infusion.freq: expected injected text within infusion.max_share=0.9 of the budget, got {freq}" in out
        assert rows[freq][5:7] == ["32.5", "infusion.freq:"], "its memory, but no GPU-hours or requeues"
    assert "total: 3 jobs to run, 3 refused" in out and "H200" in out and "50% MFU" in out


def test_the_plan_refuses_what_a_run_refuses(capsys, make_cfg):
    """The embedded world's statements take about 13 tokens each (EOS included): at F=64 the injection
    overflows the smoke budget, at F=4 it fits, in the plan as in the run."""
    assert plan.main(["experiment=smoke", "model.vocab_size=4096", "infusion.freq=4,64"]) == 0
    out = capsys.readouterr().out
    refused = "infusion.freq: expected injected text within infusion.max_share=0.9 of the budget, got 64"
    assert refused in out and "got 4" not in out
    prepare(make_cfg("model.vocab_size=4096", "infusion.freq=4"))
    with pytest.raises(ConfigError, match=re.escape(refused)):
        prepare(make_cfg("model.vocab_size=4096", "infusion.freq=64"))


def test_the_plan_refuses_blocks_and_frequencies_a_window_cannot_hold(capsys, make_cfg):
    """Smoke: 256 sequences; a block of 24 facts takes about 5 of them, so F=16 in half the run (8 a slice)
    fits and F=32 (4 a slice) does not, in the plan as in the run; F=200 needs more sequences than [0,0.5] has."""
    knobs = ["model.vocab_size=4096", "infusion.packing=block", "infusion.window=[0,0.5]"]
    assert plan.main(["experiment=smoke", *knobs, "infusion.freq=16,32"]) == 0
    out = capsys.readouterr().out
    assert "infusion.packing: expected blocks that fit the 4 sequences" in out and "the 8 sequences" not in out
    prepare(make_cfg(*knobs, "infusion.freq=16"))
    with pytest.raises(ConfigError, match="infusion.packing: expected blocks that fit the 4 sequences"):
        prepare(make_cfg(*knobs, "infusion.freq=32"))
    assert plan.main(["experiment=smoke", "model.vocab_size=4096", "infusion.window=[0,0.5]", "infusion.freq=200"]) == 0
    assert (
        "infusion.freq: expected at most the number of training sequences in infusion.window (128)"
        in capsys.readouterr().out
    )


def test_a_search_instead_of_a_grid_is_a_clear_error(capsys):
    assert plan.main(["experiment=search_freq"]) == 2
    assert "bad plan:" in capsys.readouterr().err


@pytest.mark.slow
def test_the_plan_console_script_runs_from_any_folder(tmp_path):
    """The installed package finds its configs from outside the checkout."""
    command = [console_script("kinject-plan"), "experiment=paper", "model=137m", "infusion.freq=10"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plan of python train.py -m experiment=paper model=137m infusion.freq=10: 1 jobs" in done.stdout


def test_every_size_of_the_paper_preset_fits_an_80_gb_gpu_with_its_headroom():
    """The preset's micro-batch and strategy per size (`fit_per_model`), so a 141 GB GPU too."""
    for size in SIZES:
        cfg = plan.compose_job(["experiment=paper", f"model={size}"])
        spec = ModelSpec.from_config(OmegaConf.to_container(cfg.model, resolve=True))
        memory = plan.memory_of(cfg, spec, 32000, Budget.from_config(cfg))
        assert memory.total <= (1 - plan.HEADROOM) * 80e9, size
        assert plan.strategy_of(cfg.trainer) == ("fsdp" if size == "3b" else "ddp")


def test_a_job_that_does_not_fit_its_gpu_is_refused_naming_what_to_change(capsys):
    """1.05b under DDP at 16 sequences a micro-batch: over 80 GB, within 141 GB; each change named fits, by the
    figure it names."""
    job = ["experiment=paper", "model=1.05b", "infusion.freq=10", "data.micro_batch_size=16"]
    assert plan.main(job) == 0
    out = capsys.readouterr().out
    assert (
        "data.micro_batch_size: expected a job that fits 72.0 GB per GPU (90% of its memory), got 16. estimated "
        "104.0 GB (weights 6.2, gradients 8.4, optimizer 8.4, activations 68.4, logits 12.6); it fits with "
        "data.micro_batch_size=8 (63.6 GB) or activation_checkpointing=true (41.2 GB)"
    ) in out
    assert "total: 0 jobs to run, 1 refused" in out
    for change, gb in (("data.micro_batch_size=8", "63.6"), ("activation_checkpointing=true", "41.2")):
        assert plan.main([*job, change]) == 0
        assert [row[7] for row in _rows(capsys.readouterr().out)] == [gb], change
    assert plan.main([*job, "--gpu", "H200"]) == 0
    out = capsys.readouterr().out
    assert "refused over 90% of 141 GB" in out and "total: 1 jobs to run, 0 refused" in out
    assert plan.main([*job, "--gpu", "H200", "--gpu-memory-gb", "100"]) == 0
    assert "total: 0 jobs to run, 1 refused" in capsys.readouterr().out


def test_a_job_that_fits_nowhere_but_sharded_is_told_so(capsys):
    assert (
        plan.main(["experiment=paper", "model=3b", "infusion.freq=10", "trainer=ddp", "data.micro_batch_size=1"]) == 0
    )
    assert "it fits with activation_checkpointing=true (67.8 GB) or trainer=fsdp (26.7 GB)" in capsys.readouterr().out


def test_the_memory_breakdown_adds_up_to_the_column(capsys):
    assert plan.main(["experiment=paper", "model=3b", "infusion.freq=10", "--memory"]) == 0
    out = capsys.readouterr().out
    assert "weights   grads   optim   activ  logits  mem-GB  requeues  refused" in out
    (row,) = [line.split() for line in out.splitlines() if line.startswith("3b ")]
    parts = [float(cell) for cell in row[7:12]]
    assert sum(parts) == pytest.approx(float(row[12]), abs=0.3) and row[13] == "4"


def test_a_job_longer_than_its_requeues_allow_is_refused_with_what_it_needs(capsys):
    """3b: 104.7 wall-hours, 5 runs of 24 h (less the launcher's warning before the limit)."""
    job = ["experiment=paper", "model=3b", "infusion.freq=10"]
    assert plan.main([*job, "hydra.launcher.max_num_timeout=3"]) == 0
    assert (
        "hydra.launcher.max_num_timeout: expected requeues enough for 104.7 wall-hours in runs of 24 h: 4, got 3. "
        "set hydra.launcher.max_num_timeout=4, or raise hydra.launcher.timeout_min if the cluster allows"
    ) in capsys.readouterr().out
    assert plan.main([*job, "hydra.launcher.max_num_timeout=3", "hydra.launcher.timeout_min=2880"]) == 0
    (row,) = _rows(capsys.readouterr().out)
    assert row[6:] == ["104.7", "55.0", "2"]


def test_activation_checkpointing_costs_the_layers_forward_again_in_the_hours(capsys):
    job = ["experiment=paper", "model=3b", "infusion.freq=10"]
    assert plan.main(job) == 0
    plain = float(_rows(capsys.readouterr().out)[0][5].replace(",", ""))
    assert plan.main([*job, "activation_checkpointing=true"]) == 0
    (row,) = _rows(capsys.readouterr().out)
    spec = ModelSpec.from_config({**OmegaConf.load(ROOT / "conf" / "model" / "3b.yaml")})
    flops = flops_per_token(spec, 32000, 2048)
    recompute = (flops - 6 * spec.hidden_size * 32000) / 3
    assert float(row[5].replace(",", "")) == pytest.approx(plain * (flops + recompute) / flops, abs=0.1)
    assert row[7:9] == ["22.1", "5"], "less memory, one more requeue"


def test_the_gpu_memory_comes_from_the_gpu_named_or_is_asked_for(capsys, monkeypatch):
    assert plan.main(["experiment=smoke", "model.vocab_size=4096"]) == 0
    out = capsys.readouterr().out
    assert "refused over 90% of 80 GB; requeues: none (a launcher without a time limit)" in out
    assert len(_rows(out)[0]) == 8, "no requeues without a time limit"
    monkeypatch.setattr(plan, "GPU_MEMORY_GB", ())
    assert plan.main(["experiment=smoke", "--gpu", "B200"]) == 2
    assert "--gpu-memory-gb: expected the memory of one 'B200' GPU in GB" in capsys.readouterr().err


def test_the_paper_trainer_builds_each_sizes_strategy(tmp_path):
    """`trainer=paper` looks the strategy up by size; train.py's Trainer resolves it (here on the CPU, unlaunched)."""
    for size, strategy in (("137m", DDPStrategy), ("3b", FSDP2Strategy)):
        cfg = plan.compose_job(
            ["experiment=paper", f"model={size}", "trainer.accelerator=cpu", "trainer.precision=32-true", "logger=none"]
        )
        cfg.paths.output_dir = str(tmp_path)
        trainer = build_trainer(cfg, SimpleNamespace(budget=Budget.from_config(cfg)), [], [])
        assert type(trainer.strategy) is strategy, size


def test_the_public_ladder_for_continued_pretraining_is_priced_offline(capsys, monkeypatch):
    """Its model configs carry the init's architecture: the plan reads no init (the hub is off here)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ladder = ("data=fineweb_edu", "trainer=gpu", "tokens=2000000000", "knowledge.num_facts=10000", "infusion.freq=16")
    shape = ("data.seq_len=2048", "data.batch_size=256", "data.micro_batch_size=8", "activation_checkpointing=true")
    assert plan.main(["model=smollm2_135m", *ladder, *shape]) == 0
    (row,) = _rows(capsys.readouterr().out)
    assert row[:6] == ["smollm2_135m", "16", "2.00B", "0.104%", "3,814", "2.2"] and len(row) == 8, "not refused"
