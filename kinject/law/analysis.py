"""The whole sweep in one call (what fit_law.py runs): every group's P(F) fit from law.curves,
then one cross-size law per condition and the token-budget trends from law.scaling. It is the only
code that needs both stages, so it sits above them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from kinject.law.curves import CurveFit, FitError, Group, fit_curve
from kinject.law.scaling import HUBER_DELTA, BudgetTrend, LawResult, budget_trends, fit_across


@dataclass(frozen=True)
class Analysis:
    groups: tuple[Group, ...]
    fits: tuple[CurveFit, ...]
    laws: tuple[LawResult, ...]
    budgets: tuple[BudgetTrend, ...]
    n_boot: int
    aicc_gate: bool = True


def analyse(
    groups: Sequence[Group],
    n_boot: int = 2000,
    seed: int = 0,
    targets: Sequence[tuple[float, float]] = (),
    delta: float = HUBER_DELTA,
    aicc_gate: bool = True,
) -> Analysis:
    """Every group's P(F) fit, then one cross-size law per condition on the in-range optima. Without
    `aicc_gate` an optimum needs the shape test alone, as in issue #17's collapse rule; the paper, which
    compares with no monotone curve, would report one wherever b > 0 and c > 0."""
    if not groups:
        raise FitError("no runs to fit")
    fits = [fit_curve(g.curve, n_boot, g.curve.rng(seed), aicc_gate=aicc_gate) for g in groups]
    if all(f.status == "not fitted" for f in fits):
        raise FitError("nothing to fit: " + "; ".join(f"{g.label}: {f.message}" for g, f in zip(groups, fits)))
    laws = []
    for condition in sorted({g.condition for g in groups}):
        members = [(g, f) for g, f in zip(groups, fits) if g.condition == condition]
        used = [(g, f) for g, f in members if f.in_range]
        boot = np.column_stack([f.f_star_boot for _, f in used]) if used else np.empty((n_boot, 0))
        law = fit_across(
            condition,
            [g.label for g, _ in used],
            np.array([g.params for g, _ in used]),
            np.array([g.compute for g, _ in used]),
            np.array([f.f_star for _, f in used]),
            boot,
            targets,
            np.random.default_rng([seed, *(g.curve.digest() for g, _ in used)]),
            delta,
        )
        left_out = [g.label for g, f in members if not f.in_range]
        if left_out:
            law = replace(law, message=f"{law.message}; left out (no F* inside the sweep): {', '.join(left_out)}")
        laws.append(law)
    return Analysis(tuple(groups), tuple(fits), tuple(laws), budget_trends(groups, fits), n_boot, aicc_gate)
