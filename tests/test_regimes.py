"""The regime table reads a screen's run folders and says, per setting and metric, whether every size has an
interior optimum: a setting whose curves rise and fall shows collapse, one whose curves saturate does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kinject.cli import fit_law
from kinject.law import regimes

FREQS = (0, 2, 8, 32, 128, 512)
FACTS = 300


def shape(packing: str, freq: int, fall: float) -> float:
    if freq == 0:
        return 0.25
    rising = 0.25 + 0.7 * (1 - np.exp(-freq / 20))
    return rising if packing == "scattered" else rising - fall * (freq >= 128)


def write_screen(root: Path, fall: float = 0.5) -> None:
    rng = np.random.default_rng(0)
    for packing in ("scattered", "block"):
        for model, params in (("xs", 1e5), ("tiny", 8e5)):
            for freq in FREQS:
                for seed in (0, 1):
                    outcomes = (rng.random(FACTS) < shape(packing, freq, fall)).astype(int).tolist()
                    run = root / f"infusion.packing={packing},model={model},infusion.freq={freq},seed={seed}"
                    run.mkdir(parents=True)
                    (run / "results.json").write_text(
                        json.dumps(
                            {
                                "schema": "kinject.results/1",
                                "status": "complete",
                                "run": {"seed": seed},
                                "model": {"name": model, "params_total": 3 * params, "params_non_embedding": params},
                                "budget": {"tokens": 1e6},
                                "infusion": {"freq": freq},
                                "metrics": {"memorization/acc_token": float(np.mean(outcomes))},
                                "items": {"memorization": {"fact_id": list(range(FACTS)), "correct_token": outcomes}},
                                "config": {
                                    "infusion": {"packing": packing, "freq": freq},
                                    "model": {"name": model},
                                    "seed": seed,
                                },
                            }
                        )
                    )


def test_a_setting_shows_collapse_when_every_size_rises_and_falls(tmp_path: Path, capsys) -> None:
    write_screen(tmp_path / "screen")
    out = tmp_path / "table.json"
    assert (
        regimes.main(
            [str(tmp_path / "screen"), "--metric", "memorization/acc_token", "--bootstrap", "300", "--out", str(out)]
        )
        == 0
    )
    rows = {row["setting"]: row for row in json.loads(out.read_text())}
    assert rows["infusion.packing=block"]["collapse"] is rows["infusion.packing=block"]["confirmed"] is True
    assert rows["infusion.packing=scattered"]["collapse"] is rows["infusion.packing=scattered"]["confirmed"] is False
    assert {v["model"] for v in rows["infusion.packing=block"]["verdicts"]} == {"xs", "tiny"}
    assert all(v["peak"] == 32 and v["p_fall"] < 0.05 for v in rows["infusion.packing=block"]["verdicts"])
    table = capsys.readouterr().out
    assert "| infusion.packing=block | `memorization/acc_token` |" in table and "| **yes** | **yes** |" in table


def test_no_runs_is_one_clear_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert regimes.main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("regimes: ")


def test_a_no_says_when_only_the_model_comparison_refused_the_optimum() -> None:
    def verdict(interior: bool, p_rise: float, p_fall: float, preferred: str = "saturating") -> regimes.Verdict:
        return regimes.Verdict(
            "xs", interior, "ok" if interior else "no interior optimum", p_rise, p_fall, 32.0, 12, preferred
        )

    assert verdict(True, 0.001, 0.01).word() == "yes"
    assert verdict(False, 0.001, 0.01).word() == "no, AICc prefers saturating"
    assert verdict(False, 0.001, 0.2).word() == "no"
    assert verdict(False, 0.001, 0.01, "rise-and-fall").word() == "no, the fitted form has no optimum"
    shape_only = regimes.Row("s", "m", (verdict(True, 0.001, 0.01), verdict(False, 0.001, 0.01)))
    assert shape_only.collapse and not shape_only.confirmed


def test_the_table_can_be_read_for_some_sizes_and_one_budget(tmp_path: Path, capsys) -> None:
    write_screen(tmp_path / "screen")
    out = tmp_path / "table.json"
    assert (
        regimes.main(
            [
                str(tmp_path / "screen"),
                "--metric",
                "memorization/acc_token",
                "--bootstrap",
                "200",
                "--model",
                "tiny",
                "--tokens",
                "1.003e6",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {row["setting"]: row for row in json.loads(out.read_text())}
    assert [v["model"] for v in rows["infusion.packing=block"]["verdicts"]] == ["tiny"]
    assert rows["infusion.packing=block"]["collapse"] is False  # the rule asks for two sizes or more
    assert regimes.main([str(tmp_path / "screen"), "--tokens", "2e6"]) == 2
    assert "no runs of any model at D = 2000000.0" in capsys.readouterr().err


def test_a_verdict_depends_on_its_own_runs_only(tmp_path: Path) -> None:
    """Each curve's bootstrap is seeded from its own numbers: reading more runs beside it, or reading it through
    fit_law instead of the regime table, leaves its p-values as they were."""
    write_screen(tmp_path / "screen", fall=0.06)

    def p_values(*options: str) -> dict[tuple[str, str], tuple[float, float]]:
        out = tmp_path / "table.json"
        assert (
            regimes.main(
                [
                    str(tmp_path / "screen"),
                    "--metric",
                    "memorization/acc_token",
                    "--bootstrap",
                    "200",
                    "--out",
                    str(out),
                    *options,
                ]
            )
            == 0
        )
        return {
            (row["setting"], v["model"]): (v["p_rise"], v["p_fall"])
            for row in json.loads(out.read_text())
            for v in row["verdicts"]
        }

    alone, together = p_values("--model", "xs"), p_values()
    block = ("infusion.packing=block", "xs")
    assert 0.005 < alone[block][1] < 0.5  # a p-value a different stream would move
    assert alone == {k: v for k, v in together.items() if k[1] == "xs"}
    report = tmp_path / "fit.json"
    assert fit_law.main([str(tmp_path / "screen"), "--bootstrap", "200", "--out", str(report)]) == 0
    xs_block = next(
        m
        for m in json.loads(report.read_text())["models"]
        if m["model"] == "xs" and m["condition"] == {"infusion.packing": '"block"'}
    )
    assert (xs_block["peak_test"]["p_rise"], xs_block["peak_test"]["p_fall"]) == together[block]
