"""What fit_law.py shows and writes: a terminal table, a JSON report and two PNG figures (Agg).

JSON report, schema "kinject.fit_law/1" (also in docs/fit_law.md). Numbers that do not exist
(no interior optimum, an unbounded interval side, too few points) are null, never a number.
Intervals are [lo, hi] at 95% (bootstrap percentiles); a null bound means unbounded on that side.

    schema, metric, params ("non_embedding" | "total"), params_definition, compute ("C = 6 N D"),
    sources, bootstrap (resamples), seed, level, huber_delta, notes (runs skipped, and why),
    interior_optimum ("shape test and AICc" | "shape test": what an "ok" needs)
    models[]: group, model, condition {setting: value}, params (N), tokens (D), compute (C),
        freqs (distinct F, F = 0 included), acc (mean of the metric at each), n_runs, baseline_acc (F = 0),
        status ("ok" | "no interior optimum" | "not fitted"), message, notes[],
        peak_test {peak_freq, rise, fall, p_rise, p_fall} (bootstrap against the nearest monotone
        curve; "ok" needs both p < 0.05), saturating {floor, top, f0, k} (P = floor + (top - floor)
        (1 - exp(-(F/F0)^k))), aicc {rise_and_fall, saturating, preferred} ("ok" needs rise_and_fall
        unless interior_optimum is "shape test"),
        a, b, c, r2 (P = a F^b exp(-cF) in P space; for an unbounded score, P = P(0) + a F^b exp(-cF)),
        f_star (b/c, null unless "ok"), f_star_ci, f_star_in_range,
        f_star_interior_share (share of resamples with b > 0 and c > 0), collapse_f (F > F* where
        the fit falls to half its peak), collapse_f_ci, f_star_model_free (smoothing-spline argmax,
        null unless "ok"), floored {a, b, c, f_star, r2} (P = 0.25 + a F^b exp(-cF); null for an unbounded score)
    laws[] (one per condition, i.e. combination of the infusion settings that vary):
        condition, status ("ok" | "not fitted"), message, n_points, points[] {group, params, tokens,
        compute, f_star}, A, alpha, E (F* = A / C^alpha + E, C in the units above), A_ci, alpha_ci,
        E_ci, c_ref (C used to normalise the fit), r2 (log space), n_boot_used,
        power_law {A, alpha, r2} (E = 0), aicc {law, power_law, preferred},
        varpro {A, alpha, E, max_log_gap} (variable-projection check; gap = max |log ratio| of the
        two fits' F* at the points), predictions[] {params, tokens, compute, f_star, interval},
        validation {leave_largest_out: cut | null, rollout: [cut]},
        cut = {largest_train_params, n_train, holdouts[] {group, f_star, predicted, interval,
        log_error, covered}, mean_abs_log_error, coverage}
    token_budget[]: model, condition, tokens[], f_star[], slope (F* ~ D^slope), slope_ci
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from kinject.law.analysis import Analysis
from kinject.law.curves import LEVEL, CurveFit, Group
from kinject.law.scaling import HUBER_DELTA, Cut, LawResult

SCHEMA = "kinject.fit_law/1"
GATED, SHAPE_ONLY = "shape test and AICc", "shape test"  # the report's interior_optimum


def _num(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _pair(interval: Sequence[float | None] | None) -> list[float | None] | None:
    return None if interval is None else [_num(v) for v in interval]


def _condition(condition: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in condition) or "all"


def _by_freq(group: Group) -> tuple[np.ndarray, np.ndarray]:
    freqs, inverse = np.unique(group.curve.freq, return_inverse=True)
    return freqs, np.bincount(inverse, group.curve.acc) / np.bincount(inverse)


def _model_json(group: Group, fit: CurveFit) -> dict[str, Any]:
    freqs, acc = _by_freq(group)
    plain, floored, test, saturating = fit.plain, fit.floored, fit.test, fit.saturating
    return {
        "group": group.label,
        "model": group.model,
        "condition": dict(group.condition),
        "params": group.params,
        "tokens": group.tokens,
        "compute": group.compute,
        "freqs": freqs.tolist(),
        "acc": acc.tolist(),
        "n_runs": int(group.curve.freq.size),
        "baseline_acc": fit.baseline,
        "status": fit.status,
        "message": fit.message,
        "notes": list(fit.notes),
        "peak_test": test
        and {
            "peak_freq": test.peak_freq,
            "rise": test.rise,
            "fall": test.fall,
            "p_rise": test.p_rise,
            "p_fall": test.p_fall,
        },
        "saturating": saturating
        and {"floor": saturating.floor, "top": saturating.top, "f0": saturating.f0, "k": saturating.k},
        "aicc": {"rise_and_fall": _num(fit.aicc[0]), "saturating": _num(fit.aicc[1]), "preferred": fit.preferred},
        "a": plain and plain.a,
        "b": plain and plain.b,
        "c": plain and plain.c,
        "r2": plain and plain.r2,
        "f_star": fit.f_star,
        "f_star_ci": _pair(fit.f_star_ci),
        "f_star_in_range": fit.in_range,
        "f_star_interior_share": fit.interior_share,
        "collapse_f": fit.collapse_f,
        "collapse_f_ci": _pair(fit.collapse_ci),
        "f_star_model_free": fit.model_free,
        "floored": floored
        and {
            "a": floored.a,
            "b": floored.b,
            "c": floored.c,
            "r2": floored.r2,
            "f_star": floored.f_star if fit.f_star is not None else None,
        },
    }


def _cut_json(cut: Cut) -> dict[str, Any]:
    errors = [abs(h.log_error) for h in cut.holdouts]
    covered = [h.covered for h in cut.holdouts if h.covered is not None]
    return {
        "largest_train_params": cut.largest_train,
        "n_train": cut.n_train,
        "holdouts": [
            {
                "group": h.label,
                "f_star": h.truth,
                "predicted": h.predicted,
                "interval": _pair(h.interval),
                "log_error": h.log_error,
                "covered": h.covered,
            }
            for h in cut.holdouts
        ],
        "mean_abs_log_error": float(np.mean(errors)),
        "coverage": float(np.mean(covered)) if covered else None,
    }


def _law_json(result: LawResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "condition": dict(result.condition),
        "status": result.status,
        "message": result.message,
        "n_points": len(result.labels),
    }
    if result.law is None:
        return out
    law, power, varpro = result.law, result.power, result.varpro
    assert power is not None and varpro is not None  # fitted together with the law
    gap = np.abs(law.log_f_star(result.compute) - varpro.log_f_star(result.compute)).max()
    return out | {
        "points": [
            {"group": g, "params": n, "tokens": c / (6 * n), "compute": c, "f_star": f}
            for g, n, c, f in zip(
                result.labels, result.params.tolist(), result.compute.tolist(), result.f_star.tolist()
            )
        ],
        "A": law.A,
        "alpha": law.alpha,
        "E": law.E,
        "A_ci": _pair(result.ci("A")),
        "alpha_ci": _pair(result.ci("alpha")),
        "E_ci": _pair(result.ci("E")),
        "c_ref": law.c_ref,
        "r2": result.r2,
        "n_boot_used": int(np.isfinite(result.boot[:, 1]).sum()),
        "power_law": {"A": power.A, "alpha": power.alpha, "r2": result.r2_power},
        "aicc": {"law": result.aicc, "power_law": result.aicc_power, "preferred": result.preferred},
        "varpro": {"A": _num(varpro.A), "alpha": varpro.alpha, "E": _num(varpro.E), "max_log_gap": _num(gap)},
        "predictions": [
            {
                "params": p.params,
                "tokens": p.tokens,
                "compute": 6 * p.params * p.tokens,
                "f_star": p.f_star,
                "interval": _pair(p.interval),
            }
            for p in result.predictions
        ],
        "validation": {
            "leave_largest_out": _cut_json(result.cuts[-1]) if result.cuts else None,
            "rollout": [_cut_json(c) for c in result.cuts],
        },
    }


def to_json(analysis: Analysis, meta: dict[str, Any]) -> dict[str, Any]:
    """The report; meta carries what the analysis does not know (metric, N definition, sources, notes)."""
    return {
        "schema": SCHEMA,
        **meta,
        "compute": "C = 6 N D",
        "bootstrap": analysis.n_boot,
        "level": LEVEL,
        "huber_delta": HUBER_DELTA,
        "interior_optimum": GATED if analysis.aicc_gate else SHAPE_ONLY,
        "models": [_model_json(g, f) for g, f in zip(analysis.groups, analysis.fits)],
        "laws": [_law_json(law) for law in analysis.laws],
        "token_budget": [
            {
                "model": t.model,
                "condition": dict(t.condition),
                "tokens": t.tokens.tolist(),
                "f_star": t.f_star.tolist(),
                "slope": t.slope,
                "slope_ci": _pair(t.slope_ci),
            }
            for t in analysis.budgets
        ],
    }


# ---------------------------------------------------------------------------------------------
# Terminal


def _g(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _ci(interval: Sequence[float | None] | None) -> str:
    """' [lo, hi]', with one-sided forms for unbounded sides; empty without an interval."""
    if interval is None:
        return ""
    lo, hi = interval
    if lo is None and hi is None:
        return " (unbounded)"
    if lo is None or hi is None:
        return f" (< {_g(hi)})" if lo is None else f" (> {_g(lo)})"
    return f" [{_g(lo)}, {_g(hi)}]"


def _p(test: dict[str, Any] | None, key: str) -> str:
    return "-" if test is None or test[key] is None else f"{test[key]:.3f}"


def _rows(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [list(header), *rows]]


def render(report: dict[str, Any]) -> str:
    """A readable summary of the JSON report, so the terminal and the file never disagree."""
    lines = [
        f"fit_law: {report['metric']} | {report['params_definition']} | {report['compute']} | "
        f"{report['bootstrap']} bootstrap resamples, {LEVEL:.0%} intervals"
    ]
    if report["notes"]:
        lines += [f"skipped {len(report['notes'])} run(s):"] + [f"  {n}" for n in report["notes"][:10]]
    gate = (
        " and the rise-and-fall form preferred to monotone saturation by AICc"
        if report["interior_optimum"] == GATED
        else " (the shape test alone: AICc not asked)"
    )
    lines += [
        "",
        f"P(F) = a F^b exp(-cF) per model group; interior optimum: rise and fall beyond noise (p < 0.05 each){gate}",
    ]
    rows = [
        [
            m["group"],
            _g(m["params"]),
            _g(m["tokens"]),
            f"{_g(m['freqs'][0])}-{_g(m['freqs'][-1])}",
            _g(m["baseline_acc"], 2),
            _g(m["a"]),
            _g(m["b"]),
            _g(m["c"]),
            _g(m["f_star"]) + _ci(m["f_star_ci"]),
            _g(m["collapse_f"]),
            _g(m["r2"], 3),
            _g(m["f_star_model_free"]),
            _p(m["peak_test"], "p_rise"),
            _p(m["peak_test"], "p_fall"),
            m["aicc"]["preferred"] or "-",
        ]
        for m in report["models"]
    ]
    lines += _rows(
        [
            "group",
            "N",
            "D",
            "F",
            "P(0)",
            "a",
            "b",
            "c",
            "F* [95% CI]",
            "collapse",
            "R2",
            "model-free",
            "p rise",
            "p fall",
            "AICc prefers",
        ],
        rows,
    )
    for m in report["models"]:
        texts = ([m["message"]] if m["f_star"] is None else []) + m["notes"]
        lines += [f"  {m['group']}: {text}" for text in texts]
    for law in report["laws"]:
        lines += ["", f"F*(C) = A / C^alpha + E  [{_condition(tuple(law['condition'].items()))}]"]
        if law["status"] != "ok":
            lines.append(f"  not fitted: {law['message']}")
            continue
        aicc = law["aicc"]
        lines += [
            f"  A = {_g(law['A'])}{_ci(law['A_ci'])}   alpha = {_g(law['alpha'])}{_ci(law['alpha_ci'])}   "
            f"E = {_g(law['E'])}{_ci(law['E_ci'])}",
            f"  R2 (log space) = {law['r2']:.4f} on {law['n_points']} points; power law (E = 0): "
            f"alpha = {_g(law['power_law']['alpha'])}, R2 = {law['power_law']['r2']:.4f}",
            f"  AICc: law {_g(aicc['law'], 4)}, power law {_g(aicc['power_law'], 4)} -> "
            f"{aicc['preferred'] or 'undefined (too few points)'}",
            f"  variable projection: A = {_g(law['varpro']['A'])}, alpha = {_g(law['varpro']['alpha'])}, "
            f"E = {_g(law['varpro']['E'])} (max |log gap| {_g(law['varpro']['max_log_gap'], 2)})",
        ]
        lines += [
            f"  predict N={p['params']:.3g} D={p['tokens']:.3g}: F* = {_g(p['f_star'])}{_ci(p['interval'])}"
            for p in law["predictions"]
        ]
        cuts = law["validation"]["rollout"]
        if not cuts:
            lines.append("  validation: needs 3 distinct C below the largest model")
        for i, cut in enumerate(cuts):
            name = "leave largest out" if i == len(cuts) - 1 else "rollout"
            for h in cut["holdouts"]:
                lines.append(
                    f"  {name} (fit N <= {cut['largest_train_params']:.3g}): {h['group']} F* = "
                    f"{_g(h['f_star'])}, predicted {_g(h['predicted'])}{_ci(h['interval'])}, "
                    f"error {math.expm1(h['log_error']):+.1%}"
                    + {True: ", in the interval", False: ", outside the interval", None: ""}[h["covered"]]
                )
    for t in report["token_budget"]:
        lines.append(
            f"\ntoken budget: {t['model']} F* ~ D^{t['slope']:.3g}{_ci(t['slope_ci'])} over "
            f"D = {', '.join(_g(d) for d in t['tokens'])}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Figures


def _yerr(value: float, interval: Sequence[float | None] | None) -> list[float]:
    """Error-bar lengths below and above value; none on a missing or unbounded side."""
    lo, hi = interval or (None, None)
    return [value - (lo or value), (hi or value) - value]


def plot_fits(analysis: Analysis, path: Path) -> Path:
    return _save(fits_figure(analysis), path)


def fits_figure(analysis: Analysis) -> Figure:
    """P(F) points and the verdict's model, one panel per model group: with an interior optimum, both
    rise-and-fall forms, F* and its interval; without, the monotone saturating fit (the rise-and-fall
    fit is not drawn, since the verdict rejected it)."""
    n = len(analysis.groups)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.4 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, group, fit in zip(axes.flat, analysis.groups, analysis.fits):
        pos = group.curve.freq > 0
        if not pos.any():
            ax.text(0.5, 0.5, f"{group.label}: {fit.message}", ha="center", va="center", wrap=True, fontsize=9)
            ax.set_axis_off()
            continue
        bounded = group.curve.bounded
        ax.scatter(group.curve.freq[pos], group.curve.acc[pos], s=14, color="k", alpha=0.7, label="runs")
        if bounded and group.curve.chance > 0:
            ax.axhline(group.curve.chance, color="grey", ls=":", lw=1, label="chance")
        if fit.baseline is not None:
            ax.axhline(fit.baseline, color="tab:green", ls="--", lw=1, label="F = 0 control")
        if fit.freq_span is not None:
            grid = np.geomspace(*fit.freq_span, 200)
            forms = (
                (
                    (fit.plain, "-", "a F^b e^-cF" if bounded else "P(0) + a F^b e^-cF"),
                    (fit.floored, "--", "0.25 + a F^b e^-cF"),
                )
                if fit.status == "ok"
                else ((fit.saturating, "-", "monotone saturating"),)
            )
            for form, style, name in forms:
                if form is not None:
                    ax.plot(grid, form(grid), style, color="tab:blue", lw=1.3, label=name)
        if fit.f_star is not None:
            ax.axvline(fit.f_star, color="tab:red", lw=1.2, label=f"F* = {fit.f_star:.3g}")
            lo, hi = fit.f_star_ci or (fit.f_star, fit.f_star)
            assert fit.freq_span is not None  # an optimum was fitted on at least 3 frequencies
            ax.axvspan(lo or fit.freq_span[0], hi or fit.freq_span[1], color="tab:red", alpha=0.15)
        ax.set(xscale="log", xlabel="F (exposures per fact)", ylabel="P (accuracy)" if bounded else "score")
        ax.set_title(_wrapped(f"{group.label}: {fit.status}", 55), fontsize=9)
        if bounded:
            ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, loc="best")
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig


def plot_law(analysis: Analysis, path: Path) -> Path:
    """F* against C with the law, its bootstrap band, the E = 0 fit and the predictions."""
    laws = analysis.laws
    fig = Figure(figsize=(5.6 * len(laws), 4.2))
    axes = fig.subplots(1, len(laws), squeeze=False)
    fits = {g.label: f for g, f in zip(analysis.groups, analysis.fits)}
    for ax, result in zip(axes.flat, laws):
        ax.set_title(_wrapped(f"F*(C) [{_condition(result.condition)}]", 60), fontsize=9)
        if result.law is None:
            ax.text(0.5, 0.5, _wrapped(result.message, 60), ha="center", va="center", fontsize=8)
            ax.set_axis_off()
            continue
        targets = np.array([6 * p.params * p.tokens for p in result.predictions])
        reach = np.concatenate([result.compute, targets])
        grid = np.geomspace(reach.min() / 2, reach.max() * 2, 200)
        band = result.band(grid)
        if band is not None:
            ax.fill_between(grid, *band, color="tab:blue", alpha=0.2, label="95% band")
        ax.plot(
            grid, np.exp(result.law.log_f_star(grid)), color="tab:blue", label=f"A/C^a + E, a = {result.law.alpha:.3g}"
        )
        assert result.power is not None  # fitted together with the law
        ax.plot(grid, np.exp(result.power.log_f_star(grid)), "--", color="grey", label="E = 0")
        errors = [_yerr(f, fits[g].f_star_ci) for g, f in zip(result.labels, result.f_star)]
        ax.errorbar(result.compute, result.f_star, yerr=np.array(errors).T, fmt="o", color="k", ms=4, label="models")
        if result.predictions:
            errors = [_yerr(p.f_star, p.interval) for p in result.predictions]
            ax.errorbar(
                targets,
                [p.f_star for p in result.predictions],
                yerr=np.array(errors).T,
                fmt="s",
                color="tab:red",
                ms=5,
                label="predictions",
            )
        ax.set(xscale="log", yscale="log", xlabel="C = 6 N D", ylabel="F*")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _wrapped(title: str, width: int) -> str:
    """A long label (a sweep's settings) on several lines, so that neighbouring titles do not overlap."""
    return "\n".join(textwrap.wrap(title, width, break_long_words=False))


def _save(fig: Figure, path: Path) -> Path:
    """Figure objects render with Agg without pyplot: no global backend, nothing left open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def log_wandb(report: dict[str, Any], images: Sequence[Path], project: str, wandb: Any) -> None:
    """Mirror the report to a new W&B run in the project: a table of models, the figures, the
    law's numbers as summary keys (comparable across runs) and the whole report in the summary."""
    entity, _, name = project.rpartition("/")
    run = wandb.init(
        project=name,
        entity=entity or None,
        job_type="fit_law",
        config={k: report[k] for k in ("metric", "params", "bootstrap", "seed", "sources")},
    )
    columns = ["group", "params", "tokens", "f_star", "f_star_lo", "f_star_hi", "collapse_f", "r2", "status"]
    data = [
        [
            m["group"],
            m["params"],
            m["tokens"],
            m["f_star"],
            *(m["f_star_ci"] or [None, None]),
            m["collapse_f"],
            m["r2"],
            m["status"],
        ]
        for m in report["models"]
    ]
    run.log(
        {
            "fit_law/models": wandb.Table(columns=columns, data=data),
            **{f"fit_law/{p.stem}": wandb.Image(str(p)) for p in images},
        }
    )
    for law in report["laws"]:
        prefix = f"fit_law/{_condition(tuple(law['condition'].items()))}"
        run.summary.update({f"{prefix}/{k}": law.get(k) for k in ("A", "alpha", "E", "r2", "n_points")})
    run.summary["fit_law/report"] = report
    run.finish()
