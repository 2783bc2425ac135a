"""The plan of a sweep, on CPU and offline: every job of the paper's preset with its cost, and the jobs a run
would refuse, refused by the run's own rules."""

from __future__ import annotations

import re
import subprocess

import pytest
from omegaconf import OmegaConf

from kinject import plan
from kinject.errors import ConfigError
from kinject.fingerprint import settings
from kinject.run.experiment import prepare
from kinject.training.model import ModelSpec, flops_per_token
from tests.conftest import ROOT, console_script

SIZES = ("137m", "300m", "562m", "1.05b", "3b")


def _rows(out: str) -> list[list[str]]:
    return [line.split(maxsplit=7) for line in out.splitlines() if re.match(r"^\S+\s+\d+\s+[\d.]+B", line)]


@pytest.mark.slow
def test_the_paper_preset_is_30_jobs_with_tokens_steps_and_gpu_hours_and_their_total(capsys):
    assert plan.main(["experiment=paper"]) == 0
    out = capsys.readouterr().out
    assert "H100 SXM, 989 TFLOP/s dense bf16, at 40% MFU; 8 GPU(s) per job" in out
    assert "13 tokens per injected statement" in out and "knowledge.num_facts=10000" in out
    rows = _rows(out)
    grid = [(size, freq) for size in SIZES for freq in (10, 50, 100, 200, 500, 1000)]
    assert [(row[0], int(row[1])) for row in rows] == grid
    size, freq, tokens, share, steps, hours, wall = rows[0]
    assert (tokens, steps) == ("2.70B", "2,574")  # 2.7e9 tokens in steps of 512 sequences x 2048 tokens
    assert float(share.rstrip("%")) == pytest.approx(100 * 10_000 * 10 * 13 / (2574 * 512 * 2048), rel=1e-2)
    spec = ModelSpec.from_config({**OmegaConf.load(ROOT / "conf" / "model" / "137m.yaml")})
    expected = flops_per_token(spec, 32000, 2048) * 2574 * 512 * 2048 / (0.4 * 989e12) / 3600
    assert float(hours) == pytest.approx(expected, abs=0.05) and float(wall) == pytest.approx(expected / 8, abs=0.05)
    config = OmegaConf.to_container(plan.compose_job(["experiment=paper", "model=3b"]), resolve=False)
    assert "tokens" in settings(config) and not any(key.startswith("tokens_per_model") for key in settings(config))
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
        assert rows[freq][5].startswith("infusion.freq:"), "no GPU-hours for a refused job"
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
    done = subprocess.run(
        [console_script("kinject-plan"), "experiment=paper"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plan of python train.py -m experiment=paper: 30 jobs" in done.stdout
