"""The figures of docs/results/README.md, drawn from the committed files beside this script (no run folder needed).

    .venv/bin/python docs/results/figures.py      # writes docs/results/figures/*.png

pf_per_size.png: P(F) of the `block` ladder per size, seeds and the verdict's model (screen/*.json);
alone_vs_sequence.png: a fact asked alone against after its list neighbours (screen/in_sequence.csv);
law.png: F* against C with the law, the leave-largest-out prediction and the constant (screen/shape_only/*.json);
regimes.png: the regime screen's verdicts (screen/regimes.json);
recall_vs_choice.png: multiple choice against generative recall (collapse_ladder/runs.csv, when it exists).
The curves are the committed fits' own numbers evaluated by kinject.law's forms; the law is refitted by
kinject.law.scaling.fit_law on the committed F*, which reproduces the committed A, alpha and E.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from kinject.law.curves import CHANCE, FormFit
from kinject.law.peak import ALPHA, Saturating
from kinject.law.scaling import Law, fit_law

HERE = Path(__file__).resolve().parent
OUT = HERE / "figures"
SIZES = ("xxs", "xs", "tiny", "small")
COLOURS = {"xxs": "tab:purple", "xs": "tab:blue", "tiny": "tab:orange", "small": "tab:green"}
ONE_M = 999_424  # 1M tokens in whole steps
Row = dict[str, str]


def read_csv(path: Path) -> list[Row]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def select(rows: Sequence[Row], **setting: str) -> list[Row]:
    return [r for r in rows if all(r[k] == v for k, v in setting.items())]


def by_freq(rows: Sequence[Row], column: str) -> dict[float, list[float]]:
    """The seeds' values at each F, for the rows that hold the column."""
    found: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if r.get(column, "") != "":
            found[float(r["freq"])].append(float(r[column]))
    return dict(sorted(found.items()))


def seeds_and_mean(ax: Axes, values: dict[float, list[float]], colour: str, label: str, style: str = "-") -> None:
    """Each seed a dot, the mean a line; F = 0 drawn at F = 1 on the log axis."""
    freqs = [max(f, 1.0) for f in values]
    for f, vals in zip(freqs, values.values()):
        ax.scatter([f] * len(vals), vals, s=10, color=colour, alpha=0.5)
    ax.plot(freqs, [np.mean(v) for v in values.values()], style, color=colour, lw=1.2, label=label)


def _save(fig: Figure, name: str, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    print(f"wrote {path.relative_to(HERE)}")
    return path


def _block_group(report: dict[str, Any], model: str, lr: str = "0.003") -> dict[str, Any]:
    """fit_law's model entry of one size's `block` curve at 1M tokens, with the total budget fixed."""
    for group in report["models"]:
        condition = group["condition"]
        if (
            group["model"] == model
            and group["tokens"] == ONE_M
            and condition["infusion.packing"] == '"block"'
            and condition["infusion.budget"] == '"fixed_total"'
            and condition["knowledge.num_facts"] == "120"
            and condition["optim.lr"] == lr
        ):
            return group
    raise LookupError(f"no block group of {model} at 1M tokens in the report")


def pf_per_size() -> Path:
    """Memorization and extraction of the 4 sizes: seeds, and what fit_law's full verdict fitted (the
    rise-and-fall form with F* and its interval where it found an interior optimum, the monotone
    saturating curve where it did not)."""
    runs = select(read_csv(HERE / "screen/runs.csv"), tokens=str(ONE_M), packing="block", lr="0.003", num_facts="120")
    runs = select(runs, budget_mode="fixed_total")
    fig = Figure(figsize=(13, 6))
    axes = fig.subplots(2, len(SIZES), sharex=True, sharey=True)
    for row, suite in zip(axes, ("memorization", "extraction")):
        report = json.loads((HERE / f"screen/{suite}.json").read_text())
        for ax, model in zip(row, SIZES):
            seeds_and_mean(ax, by_freq(select(runs, model=model), f"{suite}/acc_token"), "k", "seeds, mean", ":")
            group = _block_group(report, model)
            grid = np.geomspace(min(f for f in group["freqs"] if f > 0), max(group["freqs"]), 200)
            if group["status"] == "ok":
                ax.plot(grid, FormFit(group["a"], group["b"], group["c"], 0.0, group["r2"])(grid), color="tab:red")
                lo, hi = group["f_star_ci"]
                ax.axvspan(lo, hi, color="tab:red", alpha=0.15)
                ax.axvline(
                    group["f_star"], color="tab:red", lw=1, label=f"F* = {group['f_star']:.0f} [{lo:.0f}, {hi:.0f}]"
                )
            else:
                sat = group["saturating"]
                curve = Saturating(sat["floor"], sat["top"], sat["f0"], sat["k"])
                ax.plot(grid, curve(grid), "--", color="tab:blue", label="no optimum: saturating fit")
            ax.axhline(CHANCE, color="grey", lw=0.8, ls=":")
            ax.set(xscale="log", ylim=(0, 1.05), title=f"{model}: {suite}")
            ax.legend(fontsize=7, loc="upper left")
    for ax in axes[-1]:
        ax.set_xlabel("F (exposures per fact; F = 0 at 1)")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (4-way choice)")
    fig.suptitle("block packing, 1M tokens, 3 seeds: P(F) and fit_law's verdict (shape test and AICc)", fontsize=10)
    return _save(fig, "pf_per_size.png")


def alone_vs_sequence() -> Path:
    """The same checkpoints asked each fact alone (`memorization`) and after its list neighbours
    (`memorization_in_sequence`)."""
    rows = read_csv(HERE / "screen/in_sequence.csv")
    panels = (
        ("block", dict(packing="block", budget_mode="fixed_total", lr="0.003", tokens=str(ONE_M))),
        ("block, background fixed", dict(packing="block", budget_mode="fixed_background", lr="0.003")),
        ("block, lr 1e-2", dict(packing="block", budget_mode="fixed_total", lr="0.01")),
        ("shuffled_block (new order each round)", dict(packing="shuffled_block", lr="0.003")),
    )
    fig = Figure(figsize=(14, 3.6))
    axes = fig.subplots(1, len(panels), sharex=True, sharey=True)
    for ax, (title, setting) in zip(axes, panels):
        chosen = select(rows, **setting)
        for model in ("xs", "tiny"):
            mine = select(chosen, model=model)
            seeds_and_mean(ax, by_freq(mine, "memorization/acc_token"), COLOURS[model], f"{model} alone")
            seeds_and_mean(
                ax, by_freq(mine, "memorization_in_sequence/acc_token"), COLOURS[model], f"{model} in sequence", "--"
            )
        ax.set(xscale="log", xlim=(1.5, 700), ylim=(0, 1.05), title=title, xlabel="F")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("memorization accuracy")
    return _save(fig, "alone_vs_sequence.png")


def law() -> Path:
    """F* = b/c per group (shape test alone deciding) against C = 6ND, the law through all of them, the law
    through the smaller sizes with its prediction of the largest, the constant (geometric mean of the
    smaller sizes' F*) and the model-free peaks."""
    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, 2, sharey=True)
    alphas = []
    for ax, suite in zip(axes, ("extraction", "memorization")):
        report = json.loads((HERE / f"screen/shape_only/{suite}.json").read_text())
        result = next(entry for entry in report["laws"] if entry["status"] == "ok")
        groups = {g["group"]: g for g in report["models"]}
        points = result["points"]
        compute = np.array([p["compute"] for p in points])
        f_star = np.array([p["f_star"] for p in points])
        params = np.array([p["params"] for p in points])
        cut = result["validation"]["leave_largest_out"]
        train = params <= cut["largest_train_params"]
        grid = np.geomspace(compute.min() / 2, compute.max() * 2, 200)
        for mask, style, name in ((np.ones_like(train), "-", "law, all sizes"), (train, "--", "law, smaller sizes")):
            c_ref = float(np.exp(np.log(compute[mask]).mean()))
            fitted = Law(fit_law(np.log(compute[mask] / c_ref), np.log(f_star[mask])), c_ref)
            ax.plot(grid, np.exp(fitted.log_f_star(grid)), style, color="tab:blue", label=name)
            alphas.append(f"{fitted.alpha:.2f}")
        errors = np.array(
            [
                [f - groups[p["group"]]["f_star_ci"][0], groups[p["group"]]["f_star_ci"][1] - f]
                for p, f in zip(points, f_star)
            ]
        )
        ax.errorbar(compute, f_star, yerr=errors.T, fmt="o", color="k", ms=4, label="F* = b/c [95%]")
        peaks = [groups[p["group"]]["f_star_model_free"] for p in points]
        ax.scatter(compute, peaks, marker="x", color="grey", label="model-free peak")
        for held in cut["holdouts"]:
            c = groups[held["group"]]["compute"]
            lo, hi = held["interval"]
            pred = held["predicted"]
            ax.errorbar(
                [c * 1.08],
                [pred],
                yerr=[[pred - lo], [hi - pred]],
                fmt="s",
                color="tab:red",
                ms=5,
                label="held-out prediction",
            )
        constant = float(np.exp(np.log(f_star[train]).mean()))
        ax.axhline(constant, color="tab:green", ls=":", label="constant (smaller sizes' geometric mean)")
        ax.set(xscale="log", yscale="log", xlabel="C = 6 N D")
        ax.set_title(
            f"{suite}, shape test alone deciding: alpha = {alphas[-2]} (all), {alphas[-1]} (smaller)", fontsize=9
        )
    axes[0].set_ylabel("F*")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=6, fontsize=8)
    return _save(fig, "law.png", rect=(0, 0.07, 1, 1))


def _setting_label(setting: str) -> str:
    parts = dict(part.split("=", 1) for part in setting.replace("[0, 0.5]", "[0,0.5]").replace(", ", ",").split())
    words = [parts["infusion.packing"]]
    if parts["infusion.budget"] == "fixed_background":
        words.append("background fixed")
    if parts["infusion.window"] != "[0.0,1.0]":
        words.append(f"window {parts['infusion.window']}")
    if parts["optim.lr"] != "0.003":
        words.append(f"lr {parts['optim.lr']}")
    return ", ".join(words)


def regimes() -> Path:
    """Settings x metrics; each cell split xs | tiny, coloured by that size's verdict; the cell framed
    where the issue's rule holds (the shape test for both sizes), thick where both tests agree."""
    rows = json.loads((HERE / "screen/regimes.json").read_text())
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    settings = sorted({r["setting"] for r in rows}, key=_setting_label)
    colour = {"yes": "#b2182b", "shape": "#f4a582", "no": "#f7f7f7"}

    def word(verdict: dict[str, Any]) -> str:
        shape = verdict["p_rise"] is not None and verdict["p_fall"] is not None
        shape = shape and max(verdict["p_rise"], verdict["p_fall"]) < ALPHA
        return "yes" if verdict["interior"] else "shape" if shape else "no"

    fig = Figure(figsize=(11, 5.6))
    ax = fig.subplots()
    for row in rows:
        y = settings.index(row["setting"])
        x = metrics.index(row["metric"])
        verdicts = sorted(row["verdicts"], key=lambda v: ("xs", "tiny").index(v["model"]))
        for half, verdict in enumerate(verdicts):
            ax.add_patch(Rectangle((x + half / 2, y), 0.5, 1, facecolor=colour[word(verdict)], edgecolor="lightgrey"))
        if row["collapse"]:
            ax.add_patch(Rectangle((x + 0.03, y + 0.05), 0.94, 0.9, fill=False, lw=3 if row["confirmed"] else 1.5))
    ax.set(xlim=(0, len(metrics)), ylim=(len(settings), 0))
    ax.set_xticks(np.arange(len(metrics)) + 0.5, [m.replace("/", "\n") for m in metrics], fontsize=8)
    ax.set_yticks(np.arange(len(settings)) + 0.5, [_setting_label(s) for s in settings], fontsize=8)
    ax.legend(
        handles=[
            Patch(facecolor=colour["yes"], label="interior optimum by both tests"),
            Patch(facecolor=colour["shape"], label="rise and fall by the shape test only"),
            Patch(facecolor=colour["no"], edgecolor="lightgrey", label="neither"),
            Patch(fill=False, lw=1.5, label="collapse by the rule (shape test, both sizes)"),
            Patch(fill=False, lw=3, label="... and by both tests"),
        ],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )
    ax.set_title("regime screen, xs | tiny in each cell, 1M tokens, 120 facts", fontsize=10)
    return _save(fig, "regimes.png")


def recall_vs_choice(path: Path = HERE / "collapse_ladder/runs.csv") -> Path | None:
    """Per size, multiple choice (`memorization/acc_token`) against generative recall (`recall/exact`) on the
    same checkpoints, and both after the list neighbours where the runs were scored so."""
    if not path.is_file():
        print(f"skipped recall_vs_choice.png: {path.relative_to(HERE)} does not exist yet")
        return None
    rows = read_csv(path)
    models = [m for m in SIZES if len({r["freq"] for r in select(rows, model=m)}) >= 3]  # sizes still training out
    fig = Figure(figsize=(3.6 * len(models), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(models), sharey=True))
    columns: Sequence[tuple[str, str, str]] = (
        ("memorization/acc_token", "tab:blue", "multiple choice"),
        ("recall/exact", "tab:red", "generative recall"),
        ("memorization_in_sequence/acc_token", "tab:cyan", "multiple choice, in sequence"),
        ("recall_in_sequence/exact", "tab:pink", "generative recall, in sequence"),
    )
    for ax, model in zip(axes, models):
        mine = select(rows, model=model)
        for column, tint, name in columns:
            values = by_freq(mine, column)
            if values:
                seeds_and_mean(ax, values, tint, name, "--" if "sequence" in column else "-")
        ax.axhline(CHANCE, color="grey", lw=0.8, ls=":")
        ax.set(xscale="log", ylim=(0, 1.05), title=model, xlabel="F")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("share of facts")
    return _save(fig, "recall_vs_choice.png")


FIGURES: tuple[Callable[[], Path | None], ...] = (pf_per_size, alone_vs_sequence, law, regimes, recall_vs_choice)


def main() -> int:
    for draw in FIGURES:
        draw()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
