"""The cross-size law F*(C) = A / C^alpha + E (C = 6 N D) fitted to the per-model optima of
law.curves, and how F* moves with the token budget D at a fixed model.

Every extrapolation carries a validation: a two-level bootstrap (each model's F* from its own
bootstrap), the E = 0 comparison by AICc, a variable-projection check on the multi-start fit,
and rollout predictions of the larger sizes from the smaller ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, special

from kinject.law.curves import LEVEL, CurveFit, Group, Interval, _huber, _interval, _lm

HUBER_DELTA = 0.1
ALPHA_MAX = 5.0


@dataclass(frozen=True)
class Law:
    """F*(C) = A / C^alpha + E, held in normalised compute x = log(C / c_ref) for conditioning:
    log F* = logaddexp(log A' - alpha x, log E), A = A' c_ref^alpha; log E = -inf is a pure power law."""

    theta: np.ndarray  # (log A', alpha, log E)
    c_ref: float

    def log_f_star(self, compute: np.ndarray | float) -> np.ndarray:
        return _law_log(self.theta, np.log(np.asarray(compute, float) / self.c_ref)[..., None])[..., 0]

    @property
    def A(self) -> float:
        return float(np.exp(self.theta[0] + self.theta[1] * np.log(self.c_ref)))

    @property
    def alpha(self) -> float:
        return float(self.theta[1])

    @property
    def E(self) -> float:
        return float(np.exp(self.theta[2]))


@dataclass(frozen=True)
class Holdout:
    """One model's measured F* against the law fitted without it."""

    label: str
    truth: float
    predicted: float
    interval: Interval | None

    @property
    def log_error(self) -> float:
        return float(np.log(self.predicted / self.truth))

    @property
    def covered(self) -> bool | None:
        if self.interval is None:
            return None
        lo, hi = self.interval
        return (lo is None or lo <= self.truth) and (hi is None or self.truth <= hi)


@dataclass(frozen=True)
class Cut:
    """The law fitted on every size up to largest_train, predicting every larger one."""

    largest_train: float
    n_train: int
    holdouts: tuple[Holdout, ...]


@dataclass(frozen=True)
class Prediction:
    params: float
    tokens: float
    f_star: float
    interval: Interval | None


@dataclass(frozen=True)
class LawResult:
    """The cross-size law for one condition; status "not fitted" says why in message."""

    condition: tuple[tuple[str, str], ...]
    status: str
    message: str
    labels: tuple[str, ...] = ()
    params: np.ndarray = field(default_factory=lambda: np.empty(0))
    compute: np.ndarray = field(default_factory=lambda: np.empty(0))
    f_star: np.ndarray = field(default_factory=lambda: np.empty(0))
    law: Law | None = None
    power: Law | None = None  # E = 0
    varpro: Law | None = None
    boot: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))  # normalised theta per resample
    r2: float | None = None
    r2_power: float | None = None
    aicc: float | None = None
    aicc_power: float | None = None
    predictions: tuple[Prediction, ...] = ()
    cuts: tuple[Cut, ...] = ()

    def ci(self, name: str) -> Interval | None:
        """Bootstrap interval of A, alpha or E in the units of the report."""
        assert self.law is not None, "no law was fitted"
        log_a = self.boot[:, 0] + self.boot[:, 1] * np.log(self.law.c_ref)
        with np.errstate(over="ignore"):
            values = {"A": np.exp(log_a), "alpha": self.boot[:, 1], "E": np.exp(self.boot[:, 2])}[name]
        return _interval(values, positive=name != "alpha")

    def band(self, compute: np.ndarray) -> np.ndarray | None:
        """Pointwise interval (2, T) of the bootstrap laws at compute; None without resamples."""
        kept = self.boot[~np.isnan(self.boot[:, 1])]
        if not kept.size:
            return None
        assert self.law is not None, "no law was fitted"
        curves = _law_log(kept, np.log(compute / self.law.c_ref))
        return np.exp(np.quantile(curves, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0))

    @property
    def preferred(self) -> str | None:
        """The form AICc prefers; None when either AICc is undefined (too few points)."""
        if self.aicc is None or self.aicc_power is None:
            return None
        return "A/C^alpha + E" if self.aicc < self.aicc_power else "A/C^alpha"


def _law_log(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.logaddexp(theta[..., :1] - theta[..., 1:2] * x, theta[..., 2:])


def _law_jac(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    share = special.expit(theta[..., :1] - theta[..., 1:2] * x - theta[..., 2:])
    return np.stack(np.broadcast_arrays(share, -x * share, 1 - share), axis=-1)


def _law_bounds(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wide enough never to bind on sane data; E stays below the largest F*."""
    return (np.array([y.min() - 30, -ALPHA_MAX, y.min() - 30]), np.array([y.max() + 30, ALPHA_MAX, y.max()]))


def fit_law(x: np.ndarray, y: np.ndarray, delta: float = HUBER_DELTA, floor: bool = True) -> np.ndarray:
    """Huber loss (summed) on log F* by bounded L-BFGS-B from the 3 best of a grid of starts,
    alpha of either sign; floor=False fits the pure power law (log E = -inf). Returns normalised theta."""
    lower, upper = _law_bounds(y)
    size = 3 if floor else 2

    def loss(t: np.ndarray) -> tuple[float, np.ndarray]:
        theta = t if floor else np.append(t, -np.inf)
        r = _law_log(theta, x) - y
        return float(_huber(r, delta).sum()), (np.clip(r, -delta, delta) @ _law_jac(theta, x))[:size]

    f = np.exp(y)
    starts = []
    for alpha in np.linspace(-2, 2, 9):
        for share in (0.0, 0.3, 0.6, 0.9) if floor else (0.0,):
            e = share * f.min()
            starts.append(
                np.clip(
                    [np.log(np.median(f) - e), alpha, np.log(e) if e else lower[2]][:size], lower[:size], upper[:size]
                )
            )
    starts.sort(key=lambda s: loss(s)[0])
    best = min(
        (
            optimize.minimize(loss, s, jac=True, method="L-BFGS-B", bounds=list(zip(lower[:size], upper[:size])))
            for s in starts[:3]
        ),
        key=lambda res: res.fun,
    )
    return best.x if floor else np.append(best.x, -np.inf)


def varpro_law(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The law by variable projection: alpha on a grid (then refined), A and E >= 0 by
    non-negative least squares on relative errors, which equal log errors to first order.
    An independent check on the multi-start fit, which could stop in a local optimum."""
    f = np.exp(y)

    def profile(alpha: float) -> tuple[float, np.ndarray]:
        design = np.stack([np.exp(-alpha * x), np.ones_like(x)], axis=1) / f[:, None]
        coef, norm = optimize.nnls(design, np.ones_like(x))
        return norm, coef

    grid = np.linspace(-ALPHA_MAX, ALPHA_MAX, 1001)
    best = grid[np.argmin([profile(a)[0] for a in grid])]
    step = grid[1] - grid[0]
    alpha = optimize.minimize_scalar(lambda a: profile(a)[0], bounds=(best - step, best + step), method="bounded").x
    amplitude, floor = profile(alpha)[1]
    with np.errstate(divide="ignore"):
        return np.array([np.log(amplitude), alpha, np.log(floor)])


def _distinct(valid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Number of distinct x among the valid entries of each row."""
    return ((valid[:, :, None] & (x[:, None] == np.unique(x)[None, :])).any(1)).sum(1)


def _law_boot(theta: np.ndarray, x: np.ndarray, y: np.ndarray, f_boot: np.ndarray, delta: float) -> np.ndarray:
    """The second bootstrap level: the law refitted to each joint draw of the models' F* (each
    from its own bootstrap), starting at the point fit. Models without an interior optimum in a
    draw drop out of it; draws left with fewer than 3 distinct C give NaN."""
    valid = np.isfinite(f_boot) & (f_boot > 0)
    y_boot = np.log(np.where(valid, f_boot, 1.0))
    mask = valid.astype(float)
    fitted = _lm(
        lambda t: (mask * (_law_log(t, x) - y_boot), mask[..., None] * _law_jac(t, x)),
        np.tile(theta, (len(y_boot), 1)),
        *_law_bounds(y),
        delta,
    )
    fitted[_distinct(valid, x) < 3] = np.nan
    return fitted


def _r2_log(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def _aicc(resid: np.ndarray, k: int) -> float | None:
    """AICc of a Gaussian fit in log space, k = the law's parameters; None when n <= k + 1."""
    n = resid.size
    if n <= k + 1:
        return None
    return float(n * np.log(max(resid @ resid / n, 1e-300)) + 2 * k + 2 * k * (k + 1) / (n - k - 1))


def _fit_with_boot(
    compute: np.ndarray, f_star: np.ndarray, f_boot: np.ndarray, delta: float
) -> tuple[Law, np.ndarray, np.ndarray]:
    c_ref = float(np.exp(np.log(compute).mean()))
    x, y = np.log(compute / c_ref), np.log(f_star)
    law = Law(fit_law(x, y, delta), c_ref)
    return law, _law_boot(law.theta, x, y, f_boot, delta), y - law.log_f_star(compute)


def _predictive(
    law: Law, boot: np.ndarray, resid: np.ndarray, compute: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draws (B, T) of a new model's F*: bootstrap laws plus a resampled residual of the fit
    (inflated for the 3 fitted parameters), so the interval covers a model, not only the mean law."""
    boot = boot[~np.isnan(boot[:, 1])]
    scale = np.sqrt(resid.size / (resid.size - 3)) if resid.size > 3 else 1.0
    noise = rng.choice(resid * scale, size=(len(boot), compute.size))
    return np.exp(_law_log(boot, np.log(compute / law.c_ref)) + noise)


def _rollout(
    labels: Sequence[str],
    params: np.ndarray,
    compute: np.ndarray,
    f_star: np.ndarray,
    f_boot: np.ndarray,
    rng: np.random.Generator,
    delta: float,
) -> tuple[Cut, ...]:
    """Fit on the smallest sizes, predict every larger one, at every cut that leaves 3 or more
    distinct C to fit; the last cut is leave-the-largest-model-out."""
    cuts = []
    for top in np.unique(params)[:-1]:
        train = params <= top
        if np.unique(compute[train]).size < 3:
            continue
        law, boot, resid = _fit_with_boot(compute[train], f_star[train], f_boot[:, train], delta)
        held = np.flatnonzero(~train)
        draws = _predictive(law, boot, resid, compute[held], rng)
        holdouts = tuple(
            Holdout(labels[int(i)], float(f_star[i]), float(np.exp(law.log_f_star(compute[i]))), _interval(draws[:, j]))
            for j, i in enumerate(held)
        )
        cuts.append(Cut(float(top), int(train.sum()), holdouts))
    return tuple(cuts)


def fit_across(
    condition: tuple[tuple[str, str], ...],
    labels: Sequence[str],
    params: np.ndarray,
    compute: np.ndarray,
    f_star: np.ndarray,
    f_boot: np.ndarray,
    targets: Sequence[tuple[float, float]],
    rng: np.random.Generator,
    delta: float = HUBER_DELTA,
) -> LawResult:
    """The law with its bootstrap intervals, the E = 0 comparison, the variable-projection
    check, predictions at target (N, D) and the rollout validation."""
    if np.unique(compute).size < 3:
        got = ", ".join(labels) or "none"
        return LawResult(
            condition,
            "not fitted",
            "the cross-size law needs an in-range F* at 3 or more "
            f"distinct C = 6ND; got {np.unique(compute).size} ({got})",
        )
    law, boot, resid = _fit_with_boot(compute, f_star, f_boot, delta)
    x, y = np.log(compute / law.c_ref), np.log(f_star)
    power = Law(fit_law(x, y, delta, floor=False), law.c_ref)
    resid_power = y - power.log_f_star(compute)
    target = np.array([6.0 * n * d for n, d in targets])
    draws = _predictive(law, boot, resid, target, rng)
    predictions = tuple(
        Prediction(n, d, float(np.exp(law.log_f_star(c))), _interval(draws[:, i]))
        for i, ((n, d), c) in enumerate(zip(targets, target))
    )
    return LawResult(
        condition,
        "ok",
        f"fitted on {len(labels)} points",
        tuple(labels),
        params,
        compute,
        f_star,
        law,
        power,
        Law(varpro_law(x, y), law.c_ref),
        boot,
        _r2_log(y, y - resid),
        _r2_log(y, y - resid_power),
        _aicc(resid, 3),
        _aicc(resid_power, 2),
        predictions,
        _rollout(labels, params, compute, f_star, f_boot, rng, delta),
    )


# ---------------------------------------------------------------------------------------------
# Token budgets


@dataclass(frozen=True)
class BudgetTrend:
    """How F* moves with the token budget D at a fixed model: F* ~ D^slope."""

    model: str
    condition: tuple[tuple[str, str], ...]
    tokens: np.ndarray
    f_star: np.ndarray
    slope: float
    slope_ci: Interval | None


def _slopes(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Least-squares slopes of rows of y on x, each row with its own 0/1 weights."""
    total = weight.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = x - (weight * x).sum(-1, keepdims=True) / total
        yc = y - (weight * y).sum(-1, keepdims=True) / total
        return (weight * xc * yc).sum(-1) / (weight * xc**2).sum(-1)


def budget_trends(groups: Sequence[Group], fits: Sequence[CurveFit]) -> tuple[BudgetTrend, ...]:
    """For every model run at 2 or more token budgets with an in-range F*, the slope of log F*
    on log D with its bootstrap interval (the paper: larger budgets move F* up, super-linearly)."""
    trends = []
    for key in sorted({(g.model, g.condition) for g in groups}):
        chosen = [(g, f) for g, f in zip(groups, fits) if (g.model, g.condition) == key and f.in_range]
        tokens = np.array([g.tokens for g, _ in chosen])
        if np.unique(tokens).size < 2:
            continue
        f_star = np.array([f.f_star for _, f in chosen])
        x = np.log(tokens)
        slope = float(_slopes(x, np.log(f_star), np.ones_like(x)))
        boot = np.column_stack([f.f_star_boot for _, f in chosen])
        valid = np.isfinite(boot) & (boot > 0)
        slopes = _slopes(x, np.log(np.where(valid, boot, 1.0)), valid.astype(float))
        slopes[_distinct(valid, x) < 2] = np.nan
        trends.append(BudgetTrend(key[0], key[1], tokens, f_star, slope, _interval(slopes, positive=False)))
    return tuple(trends)
