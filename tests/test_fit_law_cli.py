"""fit_law.py end to end, in-process: results.json trees, a CSV and recorded W&B runs in, a JSON
report and figures out; unusable input gives exit code 2 and one clear line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from kinject import results
from kinject.cli import fit_law
from kinject.law.runs import TableError, load_csv, load_runs, load_wandb, to_groups
from tests.conftest import console_script

MODELS = {"tiny": 1e5, "small": 4e5, "base": 1.6e6, "large": 6.4e6}  # non-embedding N
TOKENS = 1e6
FREQS = (0, 2, 4, 8, 16, 32, 64, 128)
FACTS = 120


def f_star_of(params: float) -> float:
    """A law F* = A / C^alpha + E for the fixtures to fall on."""
    return 54 * (6 * params * TOKENS / 6e11) ** -0.5 + 6


def accuracy(params: float, freq: float) -> float:
    b = 0.9
    c = b / f_star_of(params)
    return 0.25 if freq == 0 else 0.92 * (freq * c / b) ** b * np.exp(b - c * freq)


def write_run(
    root: Path, model: str, freq: float, seed: int, rng: np.random.Generator, status: str = "complete"
) -> Path:
    params = MODELS[model]
    outcomes = (rng.random(FACTS) < accuracy(params, freq)).astype(int).tolist()
    margins = np.round(4 * (accuracy(params, freq) - 0.5) + rng.normal(0, 1, FACTS), 4).tolist()
    run_dir = root / f"{model}_f{freq}_s{seed}"
    payload = {
        "schema": "kinject.results/1",
        "status": status,
        "run": {"name": f"infusion.freq={freq}", "sweep": "test", "seed": seed, "output_dir": str(run_dir)},
        "model": {"name": model, "params_total": params * 3, "params_non_embedding": params},
        "budget": {"tokens": TOKENS, "seq_len": 128, "batch_size": 16, "steps": 488},
        "infusion": {"freq": freq, "format": "statement", "paraphrase": "duplicate", "num_facts": FACTS},
        "metrics": {
            "memorization/acc_token": float(np.mean(outcomes)),
            "memorization/acc_sum": float(np.mean(outcomes[::-1])),
            "memorization/margin": float(np.mean(margins)),
        },
        "items": {
            "memorization": {
                "fact_id": list(range(FACTS)),
                "correct_token": outcomes,
                "correct_sum": outcomes[::-1],
                "margin": margins,
            }
        },
        "curve": [],
        "config": {},
    }
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(payload))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "multirun" / "ladder"
    for model in MODELS:
        for freq in FREQS:
            write_run(root, model, freq, 0, rng)
    write_run(root, "tiny", 16, 1, rng)
    write_run(root, "tiny", 256, 0, rng, status="running")
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text("{not json")
    return tmp_path / "multirun"


def covers(interval: list[float | None], value: float) -> bool:
    lo, hi = interval
    return lo is not None and hi is not None and lo <= value <= hi


def run_cli(*argv: str) -> int:
    return fit_law.main([*argv, "--bootstrap", "200"])


def test_runs_tree_gives_report_and_plots(sweep: Path, tmp_path: Path, capsys) -> None:
    out, plots = tmp_path / "report.json", tmp_path / "figures"
    assert run_cli(str(sweep), "--out", str(out), "--plots", str(plots), "--predict", "1e8:1e6") == 0
    report = json.loads(out.read_text())
    assert report["schema"] == "kinject.fit_law/1" and report["params"] == "non_embedding"
    assert "non-embedding" in report["params_definition"]
    assert any("running" in n for n in report["notes"]) and any("broken" in n for n in report["notes"])
    assert [m["group"] for m in report["models"]] == sorted(MODELS)
    for model in report["models"]:
        assert {"a", "b", "c", "f_star", "f_star_ci", "collapse_f", "r2", "floored"} <= model.keys()
        assert model["status"] == "ok" and model["freqs"][0] == 0 and model["baseline_acc"] is not None
        lo, hi = model["f_star_ci"]
        assert lo < model["f_star"] < hi < model["collapse_f"]
        # 120 facts, one seed: F* within about 3 standard errors of the law the runs were drawn from
        assert model["f_star"] == pytest.approx(f_star_of(MODELS[model["model"]]), rel=0.1), model
    tiny = next(m for m in report["models"] if m["model"] == "tiny")
    assert tiny["n_runs"] == len(FREQS) + 1
    (law,) = report["laws"]
    assert law["status"] == "ok" and law["n_points"] == len(MODELS)
    assert {"A", "alpha", "E", "r2", "A_ci", "alpha_ci", "E_ci", "power_law", "aicc", "varpro"} <= law.keys()
    assert law["alpha"] == pytest.approx(0.5, abs=0.15) and covers(law["alpha_ci"], 0.5) and law["r2"] > 0.8
    assert covers(law["A_ci"], 54 * 6e11**0.5) and covers(law["E_ci"], 6)  # f_star_of as A / C^alpha + E
    (prediction,) = law["predictions"]
    assert prediction["params"] == 1e8 and covers(prediction["interval"], f_star_of(1e8))
    assert prediction["f_star"] == pytest.approx(f_star_of(1e8), rel=0.35)
    held_out = law["validation"]["leave_largest_out"]["holdouts"]
    assert [h["group"] for h in held_out] == ["large"]
    assert (plots / "pf_fits.png").read_bytes()[:4] == b"\x89PNG"
    assert (plots / "law.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "leave largest out" in text and "large" in text and "F*(C) = A / C^alpha + E" in text


def test_metric_and_params_switch(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert run_cli(str(sweep), "--metric", "memorization/acc_sum", "--params", "total", "--out", str(out)) == 0
    report = json.loads(out.read_text())
    assert report["metric"] == "memorization/acc_sum" and "all parameters" in report["params_definition"]
    assert {m["params"] for m in report["models"]} == {3 * n for n in MODELS.values()}


def test_csv_source(tmp_path: Path) -> None:
    rows = ["model,params,tokens,freq,acc,n_items"] + [
        f"{m},{n:g},{TOKENS:g},{f},{accuracy(n, f):.4f},200" for m, n in MODELS.items() for f in FREQS
    ]
    path = tmp_path / "published.csv"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "report.json"
    assert run_cli("--csv", str(path), "--out", str(out)) == 0
    report = json.loads(out.read_text())
    assert "as given" in report["params_definition"]
    alpha = report["laws"][0]["alpha"]
    assert abs(alpha - 0.5) < 0.1, alpha


@pytest.mark.parametrize(
    "content, expected",
    [
        ("model,params,tokens,freq\n", "line 1: missing column(s) acc"),
        (
            "model,params,tokens,freq,acc\na,1e6,1e6,1,0.3\na,1e6,1e6,2,0.4\na,1e6,1e6,4,high\n",
            "line 4: column 'acc' must be a number, got 'high'",
        ),
        ("model,params,tokens,freq,acc\na,1e6,1e6,1,1.3\n", "line 2: expected 0 <= acc <= 1"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path: Path, capsys, content: str, expected: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert run_cli("--csv", str(path)) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unusable_input_exits_2(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    for freq in (4, 16):
        write_run(tmp_path / "two", "tiny", freq, 0, rng)
    assert run_cli(str(tmp_path / "two")) == 2
    assert "needs at least 3 distinct frequencies F > 0, got 2" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run_cli(str(tmp_path / "empty")) == 2
    assert "no results.json" in capsys.readouterr().err
    assert run_cli(str(tmp_path / "two"), "--metric", "heldout/loss") == 2
    assert "expected an accuracy" in capsys.readouterr().err


def test_single_model_reports_no_law(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    for freq in FREQS:
        write_run(tmp_path / "one", "tiny", freq, 0, rng)
    out = tmp_path / "report.json"
    assert run_cli(str(tmp_path / "one"), "--out", str(out), "--predict", "1e9:1e9") == 0
    (law,) = json.loads(out.read_text())["laws"]
    assert law["status"] == "not fitted" and "3 or more distinct C" in law["message"] and "A" not in law
    assert "not fitted: the cross-size law needs" in capsys.readouterr().out


class FakeRun:
    def __init__(self, name: str, model: str, freq: float, acc: float | None, state: str = "finished") -> None:
        params = MODELS[model]
        self.name, self.state, self.group, self.tags = name, state, "ladder", ["v1"]
        self.config = {
            "model": {"name": model},
            "infusion": {"freq": freq, "format": "statement"},
            "seed": 0,
            "derived": {"params_total": 3 * params, "params_non_embedding": params, "tokens": TOKENS},
        }
        self.summary = {} if acc is None else {"memorization/acc_token": acc, "memorization/n_items": 300}


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def runs(self, path: str, filters: dict) -> list[FakeRun]:
        self.calls.append((path, filters))
        runs = [FakeRun(f"{m}-{f}", m, f, accuracy(n, f)) for m, n in MODELS.items() for f in FREQS]
        return runs + [FakeRun("crashed", "tiny", 8, 0.5, state="crashed"), FakeRun("partial", "tiny", 8, None)]


def test_wandb_loader_maps_runs_and_filters() -> None:
    api = FakeApi()
    table = load_wandb("me/kinject", group="ladder", tag="v1", api=api)
    assert api.calls == [("me/kinject", {"group": "ladder", "tags": {"$in": ["v1"]}})]
    assert len(table.runs) == len(MODELS) * len(FREQS)
    run = table.runs[0]
    assert run.n_items == 300 and run.items is None and run.params["non_embedding"] == MODELS[run.model]
    assert any("crashed" in n for n in table.notes) and any("no memorization/acc_token" in n for n in table.notes)


def test_wandb_cli_reads_and_logs(tmp_path: Path, monkeypatch) -> None:
    logged: dict = {}

    class FakeWandbRun:
        summary: dict = {}

        def log(self, data: dict) -> None:
            logged.update(data)

        def finish(self) -> None:
            logged["finished"] = True

    fake = types.SimpleNamespace(
        Api=FakeApi,
        Table=lambda columns, data: ("table", columns, data),
        Image=lambda path: ("image", path),
        init=lambda **kwargs: logged.update(init=kwargs) or FakeWandbRun(),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    plots = tmp_path / "figures"
    assert run_cli("--wandb", "me/kinject", "--tag", "v1", "--plots", str(plots), "--wandb-log") == 0
    assert logged["init"]["project"] == "kinject" and logged["init"]["entity"] == "me"
    assert logged["fit_law/pf_fits"] == ("image", str(plots / "pf_fits.png"))
    assert len(logged["fit_law/models"][2]) == len(MODELS) and logged["finished"]
    assert FakeWandbRun.summary["fit_law/all/n_points"] == len(MODELS)
    assert FakeWandbRun.summary["fit_law/report"]["schema"] == "kinject.fit_law/1"


def test_csv_loader_reads_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("model,params,tokens,freq,acc,seed,n_items\na,1e6,2e6,4,0.5,1,80\na,1e6,2e6,8,0.6,,\n")
    first, second = load_csv(path).runs
    assert (first.seed, first.n_items, first.params) == (1, 80, {"given": 1e6})
    assert (second.seed, second.n_items) == (None, None)


def test_groups_key_on_what_varies(tmp_path: Path) -> None:
    """Tokens and infusion settings enter the group key only when they vary; seeds are replicates
    whose per-item outcomes are paired by fact across every F and seed (the same facts)."""
    rng = np.random.default_rng(2)
    for seed in (0, 1):
        for freq in (4, 16, 64):
            write_run(tmp_path / "sweep", "tiny", freq, seed, rng)
    payload_path = write_run(tmp_path / "sweep", "tiny", 8, 0, rng) / "results.json"
    payload = json.loads(payload_path.read_text())
    payload["budget"]["tokens"] = 2 * TOKENS
    payload["infusion"]["format"] = "qa"
    payload_path.write_text(json.dumps(payload))
    groups = to_groups(load_runs([tmp_path / "sweep"]))
    assert [g.label for g in groups] == ["tiny D=1e+06 format=statement", "tiny D=2e+06 format=qa"]
    assert groups[0].condition == (("format", "statement"),) and groups[0].tokens == TOKENS
    curve = groups[0].curve
    assert curve.freq.tolist() == [4, 4, 16, 16, 64, 64]
    assert [len(runs) for runs, _ in curve.paired] == [6]
    assert all(outcomes.shape == (6, FACTS) for _, outcomes in curve.paired)


def test_runs_of_different_settings_are_never_pooled(tmp_path: Path) -> None:
    """Two runs of the same model and F that differ in data and vocabulary make two curves, labelled by both."""
    rng = np.random.default_rng(0)
    for vocab, folder in ((4096, "a"), (8192, "b")):
        for freq in (0, 16):
            run = write_run(tmp_path / folder, "tiny", freq, 0, rng)
            record = json.loads((run / "results.json").read_text())
            record["config"] = {
                "data": {"tokenizer": {"vocab_size": vocab}, "source": "synthetic"},
                "model": {"name": "tiny"},
                "seed": 0,
                "infusion": {"freq": freq},
            }
            (run / "results.json").write_text(json.dumps(record))
    groups = to_groups(load_runs([tmp_path / "a", tmp_path / "b"]))
    assert len(groups) == 2
    assert sorted(g.label for g in groups) == [
        "tiny data.tokenizer.vocab_size=4096",
        "tiny data.tokenizer.vocab_size=8192",
    ]


def test_an_unbounded_margin_is_fitted_without_a_chance_floor(sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "margin.json"
    assert run_cli(str(sweep), "--metric", "memorization/margin", "--out", str(out)) == 0
    report = json.loads(out.read_text())
    for model in report["models"]:
        assert model["baseline_acc"] < 0 and model["floored"] is None
        assert model["status"] == "ok" and model["f_star"] == pytest.approx(f_star_of(MODELS[model["model"]]), rel=0.5)
    assert run_cli(str(sweep), "--metric", "memorization/gold_rank") == 2
    assert "'SUITE/{margin,gold_logprob}'" in capsys.readouterr().err


def test_seeds_are_replicates_even_where_the_infusion_seed_follows_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for seed in (0, 1):
        for freq in (4, 16, 64):
            path = write_run(tmp_path / "sweep", "tiny", freq, seed, rng) / "results.json"
            payload = json.loads(path.read_text())
            payload["config"] = {"seed": seed, "infusion": {"freq": freq, "seed": seed}, "model": {"name": "tiny"}}
            path.write_text(json.dumps(payload))
    (group,) = to_groups(load_runs([tmp_path / "sweep"]))
    assert group.label == "tiny" and group.curve.freq.tolist() == [4, 4, 16, 16, 64, 64]


def test_fixed_background_runs_grow_with_f_and_still_make_one_curve(tmp_path: Path) -> None:
    """Under fixed_background a run trains its background budget plus its injected tokens (whole steps), so D
    differs at every F; the curve is keyed on the background budget, the same at every F."""
    rng = np.random.default_rng(0)
    step = 16 * 128
    for freq in (0, 2, 8, 32, 128):
        path = write_run(tmp_path / "sweep", "tiny", freq, 0, rng) / "results.json"
        record = json.loads(path.read_text())
        injected = freq * FACTS * 13
        grown = 488 * step + -(-injected // step) * step
        record["budget"] = {
            "tokens": grown,
            "seq_len": 128,
            "batch_size": 16,
            "steps": grown // step,
            "mode": "fixed_background",
            "injected_tokens": injected,
            "background_tokens": grown - injected,
        }
        path.write_text(json.dumps(record))
    groups = to_groups(load_runs([tmp_path / "sweep"]))
    assert len(groups) == 1 and groups[0].tokens == 488 * step
    assert sorted(groups[0].curve.freq.tolist()) == [0, 2, 8, 32, 128]


def test_shape_only_finds_the_optimum_that_aicc_refuses_a_step(tmp_path: Path, capsys) -> None:
    """A step-shaped rise then a fall beyond noise (tiny at 2M tokens under `block`): the paper's form draws the
    step worse than a monotone sigmoid, so AICc refuses the optimum that the shape test finds."""
    step = {0: 0.26, 2: 0.24, 8: 0.42, 16: 0.81, 32: 0.81, 64: 0.86, 128: 0.74, 256: 0.65, 512: 0.58}
    rng = np.random.default_rng(4)
    path = tmp_path / "step.csv"
    path.write_text(
        "model,params,tokens,freq,acc,seed,n_items\n"
        + "".join(
            f"tiny,8e5,2e6,{f},{rng.binomial(120, p) / 120:.4f},{s},120\n" for f, p in step.items() for s in range(3)
        )
    )
    verdicts = {}
    for options in ((), ("--shape-only",)):
        out = tmp_path / "report.json"
        assert run_cli("--csv", str(path), "--out", str(out), *options) == 0
        verdicts[options] = json.loads(out.read_text())
    gated, shape = verdicts[()], verdicts[("--shape-only",)]
    assert gated["interior_optimum"] == "shape test and AICc" and shape["interior_optimum"] == "shape test"
    assert gated["models"][0]["message"] == "no interior optimum: a monotone saturating curve fits as well (AICc)"
    assert shape["models"][0]["status"] == "ok" and 32 < shape["models"][0]["f_star"] < 256
    assert "(p < 0.05 each) (the shape test alone: AICc not asked)" in capsys.readouterr().out


def fit_law_cli(*argv: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run(
        [console_script("kinject-fit-law"), *argv, "--bootstrap", "50"], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_a_csv_saved_with_a_bom_is_read(tmp_path: Path) -> None:
    """Excel writes CSV as UTF-8 with a byte-order mark; the triples loader accepts one, so does fit_law."""
    rows = ["model,params,tokens,freq,acc"] + [
        f"{m},{n:g},{TOKENS:g},{f},{accuracy(n, f):.4f}" for m, n in MODELS.items() for f in FREQS
    ]
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    out = tmp_path / "report.json"
    done = fit_law_cli("--csv", str(path), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert [m["model"] for m in json.loads(out.read_text())["models"]] == sorted(MODELS)


@pytest.mark.slow
def test_plots_into_a_file_is_refused_before_fitting(sweep: Path, tmp_path: Path) -> None:
    file = tmp_path / "figures"
    file.write_text("not a folder")
    done = fit_law_cli(str(sweep), "--plots", str(file))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"kinject-fit-law: error: --plots: expected a folder for pf_fits.png and law.png, got the file {file}"
    )


@pytest.mark.parametrize(
    "option, below, expected",
    [
        ("--plots", "sub", "--plots: expected a folder for pf_fits.png and law.png, got the file {file}"),
        ("--out", "report.json", "--out: expected a file path in a folder, but {file} is a file"),
    ],
)
def test_an_output_below_a_file_is_refused_before_fitting(
    sweep: Path, tmp_path: Path, capsys, option: str, below: str, expected: str
) -> None:
    file = tmp_path / "figures"
    file.write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        run_cli(str(sweep), option, str(file / below))
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(expected.format(file=file))


@pytest.mark.slow
def test_an_unknown_metric_lists_the_metrics_the_runs_hold(sweep: Path) -> None:
    done = fit_law_cli(str(sweep), "--metric", "memorization/acc_chars")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == (
        f"fit_law: --metric 'memorization/acc_chars': no complete run under {sweep} holds it; they hold "
        "memorization/acc_sum, memorization/acc_token, memorization/margin"
    )


def test_an_unknown_metric_of_wandb_runs_lists_theirs() -> None:
    with pytest.raises(
        TableError, match=r"no finished run of wandb:me/kinject holds it; they hold memorization/acc_tok"
    ):
        load_wandb("me/kinject", "memorization/acc_sum", api=FakeApi())


@pytest.mark.slow
def test_results_of_a_folder_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [console_script("kinject-results"), str(tmp_path / "multirun" / "ladderr")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        f"kinject-results: error: expected folders of runs, got {tmp_path / 'multirun' / 'ladderr'}: no such folder"
    )


def test_results_of_a_folder_without_complete_runs_says_so(tmp_path: Path, capsys) -> None:
    write_run(tmp_path, "tiny", 4, 0, np.random.default_rng(0), status="running")
    assert results.main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("model,params_total,") and len(captured.out.splitlines()) == 1
    assert captured.err == f"kinject-results: no complete run under {tmp_path}\n"


STEP = 16 * 128  # tokens per step of the fixtures' budget


def logged_config(model: str, freq: float, mode: str, vocab: int = 4096) -> dict:
    """A W&B run's config as train.py logs it (the resolved config and `derived`: the record's model, budget and
    infusion sections), with the module's hyperparameters Lightning logs beside it. Under fixed_background the
    run grows by its injected tokens in whole steps: D and the step counts differ at every F."""
    params = MODELS[model]
    injected = freq * FACTS * 13
    background = 488 * STEP
    trained = background + -(-injected // STEP) * STEP if mode == "fixed_background" else background
    steps = trained // STEP
    budget = {"tokens": trained, "seq_len": 128, "batch_size": 16, "steps": steps, "mode": mode}
    return {
        "model": {"name": model},
        "infusion": {"freq": freq, "format": "statement", "budget": mode},
        "data": {"tokenizer": {"vocab_size": vocab}},
        "seed": 0,
        "tokens": background,
        "derived": {
            "name": model,
            "params_total": 3 * params,
            "params_non_embedding": params,
            **budget,
            "injected_tokens": injected,
            "background_tokens": trained - injected,
            "freq": freq,
        },
        **{"lr": 3e-3, "vocab_size": vocab, "total_steps": steps, "warmup_steps": steps // 10},
    }


class RecordedApi:
    """wandb.Api over recorded runs: `.runs()` gives objects with the name, state, config and summary it reads."""

    def __init__(self, runs: list[types.SimpleNamespace]) -> None:
        self.recorded = runs

    def runs(self, path: str, filters: dict) -> list[types.SimpleNamespace]:
        return self.recorded


def wandb_run(name: str, config: dict, summary: dict) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=name, state="finished", config=config, summary=summary)


@pytest.mark.parametrize("mode", ["fixed_total", "fixed_background"])
def test_a_wandb_sweep_makes_one_curve_per_model_in_either_budget_mode(mode: str, tmp_path: Path, monkeypatch) -> None:
    """D is the background budget under fixed_background, as the results.json loader takes it: the law is fitted
    across the four sizes, not left with one-point groups."""
    runs = [
        wandb_run(f"{m}-{f}", logged_config(m, f, mode), {"memorization/acc_token": accuracy(n, f)})
        for m, n in MODELS.items()
        for f in FREQS
    ]
    groups = to_groups(load_wandb("me/kinject", api=RecordedApi(runs)))
    assert [(g.model, g.tokens, g.curve.freq.tolist()) for g in groups] == [
        (m, 488 * STEP, list(FREQS)) for m in sorted(MODELS)
    ]
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=lambda: RecordedApi(runs)))
    out = tmp_path / "report.json"
    assert run_cli("--wandb", "me/kinject", "--out", str(out)) == 0
    (law,) = json.loads(out.read_text())["laws"]
    assert law["status"] == "ok" and law["n_points"] == len(MODELS)
    assert law["alpha"] == pytest.approx(0.5, abs=0.05)


def test_wandb_runs_of_different_settings_are_never_pooled() -> None:
    runs = [
        wandb_run(f"v{vocab}-{f}", logged_config("tiny", f, "fixed_total", vocab), {"memorization/acc_token": 0.5})
        for vocab in (4096, 8192)
        for f in (0, 16)
    ]
    groups = to_groups(load_wandb("me/kinject", api=RecordedApi(runs)))
    assert [(g.label, g.curve.freq.tolist()) for g in groups] == [
        ("tiny data.tokenizer.vocab_size=4096", [0, 16]),
        ("tiny data.tokenizer.vocab_size=8192", [0, 16]),
    ]


@pytest.mark.slow
def test_a_run_reads_the_same_from_its_offline_wandb_run_as_from_its_record(make_cfg, tmp_path, monkeypatch) -> None:
    """A tiny fixed_background run logged to W&B offline: the config and summary its W&B run holds when it
    finishes (what the server would hold after `wandb sync`) give the run its results.json gives, and copies of
    it at other F (D and the steps grown) make one curve."""
    import wandb

    from kinject.cli import train as train_script
    from kinject.run import record

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logged: dict = {}
    close = record.close_loggers

    def snapshot_then_close(loggers: list, outcome: str) -> None:
        assert wandb.run is not None
        logged["config"] = json.loads(json.dumps(wandb.run.config.as_dict()))
        logged["summary"] = json.loads(json.dumps(dict(wandb.run.summary), default=str))
        close(loggers, outcome)

    monkeypatch.setattr(record, "close_loggers", snapshot_then_close)
    cfg = make_cfg("logger=wandb", "infusion.budget=fixed_background", "infusion.freq=2")
    train_script.train(cfg)

    (from_wandb,) = load_wandb("me/kinject", api=RecordedApi([wandb_run("r", **logged)])).runs
    (from_record,) = load_runs([cfg.paths.output_dir]).runs
    fields = ("model", "params", "tokens", "freq", "acc", "seed", "n_items", "condition")
    assert [getattr(from_wandb, f) for f in fields] == [getattr(from_record, f) for f in fields]
    derived = logged["config"]["derived"]
    step = derived["batch_size"] * derived["seq_len"]
    assert from_wandb.tokens == derived["background_tokens"] // step * step < derived["tokens"]

    def at(freq: int) -> dict:
        config = json.loads(json.dumps(logged["config"]))
        config["infusion"]["freq"] = config["derived"]["freq"] = freq
        config["derived"]["tokens"] += freq * step  # one more step per F
        config["derived"]["steps"] += freq
        config["total_steps"] += freq
        return config

    sweep = [wandb_run(f"f{f}", at(f), logged["summary"]) for f in (0, 2, 8, 32)]
    (group,) = to_groups(load_wandb("me/kinject", api=RecordedApi(sweep)))
    assert group.tokens == from_record.tokens and group.curve.freq.tolist() == [0, 2, 8, 32]


def test_recall_re_scored_beside_each_run_is_fitted_without_a_chance_floor(sweep: Path, tmp_path: Path) -> None:
    """Generative recall has no options, so no chance level: fit_law fits it from 0 (no floored form), reading
    the metrics and items of evaluate.py's re-scoring file beside each record. A run without one is noted."""
    rng = np.random.default_rng(1)
    records = sorted(p for p in sweep.rglob("results.json") if '"status": "complete"' in p.read_text())
    skipped = next(p for p in records if p.parent.name == "base_f64_s0")
    for path in records:
        if path == skipped:
            continue
        record = json.loads(path.read_text())
        truth = max(0.0, accuracy(record["model"]["params_non_embedding"], record["infusion"]["freq"]) - 0.25) / 0.75
        exact = (rng.random(FACTS) < truth).astype(int).tolist()
        items = {"recall": {"fact_id": list(range(FACTS)), "exact": exact}}
        (path.parent / "rescored.json").write_text(
            json.dumps({"metrics": {"recall/exact": np.mean(exact)}, "items": items})
        )
    out = tmp_path / "recall.json"
    assert run_cli(str(sweep), "--metric", "recall/exact", "--metrics-from", "rescored.json", "--out", str(out)) == 0
    report = json.loads(out.read_text())
    assert {m["model"] for m in report["models"]} == set(MODELS)
    for model in report["models"]:
        assert model["floored"] is None and model["baseline_acc"] == 0.0
        assert model["status"] == "ok" and model["f_star"] == pytest.approx(f_star_of(MODELS[model["model"]]), rel=0.3)
    assert f"{skipped}: no rescored.json beside it" in json.dumps(report)

    plain = tmp_path / "choice.json"
    assert run_cli(str(sweep), "--out", str(plain)) == 0
    assert all(m["floored"] is not None for m in json.loads(plain.read_text())["models"])


def test_results_items_are_each_runs_outcomes_fact_by_fact_and_a_missing_field_is_named(tmp_path: Path, capsys) -> None:
    """`kinject-results --items` writes the per-item outcomes the intervals resample, from each record or from
    the re-scoring beside it; a suite or field a record lacks is an error naming the record, not a short table."""
    rng = np.random.default_rng(0)
    run = write_run(tmp_path, "tiny", 8, 1, rng)
    record = json.loads((run / "results.json").read_text())
    (run / "rescored.json").write_text(
        json.dumps({"metrics": {"recall/exact": 0.5}, "items": {"recall": {"fact_id": [3, 5], "exact": [1, 0]}}})
    )
    assert results.main([str(tmp_path), "--items", "memorization/correct_token"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["model", "freq", "seed", "suite", "fact_id", "outcome"]
    assert rows[1:] == [
        ["tiny", "8", "1", "memorization", str(fact), str(outcome)]
        for fact, outcome in zip(range(FACTS), record["items"]["memorization"]["correct_token"], strict=True)
    ]
    assert results.main([str(tmp_path), "--items", "recall/exact", "--metrics-from", "rescored.json"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["tiny,8,1,recall,3,1", "tiny,8,1,recall,5,0"]
    assert results.main([str(tmp_path), "--items", "recall/exact"]) == 2
    assert capsys.readouterr().err == (
        f"kinject-results: {run / 'results.json'}: no per-item 'exact' of suite 'recall'; --items takes SUITE/FIELD\n"
    )
