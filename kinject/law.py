"""The fitting maths of the knowledge-infusion scaling law (Lv et al. 2025), made robust.

Per model group, memorization accuracy P at injection frequency F follows P = a F^b exp(-cF),
whose optimum F* = b/c exists only when b > 0 and c > 0; the chance-floored form
0.25 + a F^b exp(-cF) is fitted beside it. Across sizes F*(C) = A / C^alpha + E, C = 6 N D.
Every optimum carries a bootstrap interval and every extrapolation a validation.
Pure numpy/scipy on arrays: loading and reporting live in results_table and law_report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import optimize, special, stats
from scipy.interpolate import make_smoothing_spline

CHANCE = 0.25
LEVEL = 0.95
HUBER_DELTA = 0.1
ALPHA_MAX = 5.0
# theta of P(F) = (log a, b, c * F_max): c scaled by the largest F keeps the normal equations conditioned.
P_LOWER = np.array([-30.0, -10.0, -50.0])
P_UPPER = np.array([10.0, 10.0, 50.0])

Interval = tuple[float | None, float | None]


class FitError(ValueError):
    """Input the fits cannot use at all; the message says what is missing."""


@dataclass(frozen=True)
class Curve:
    """The runs of one model group: runs at the same F (seeds) are replicates."""

    freq: np.ndarray
    acc: np.ndarray
    n_items: np.ndarray  # NaN where the source gives only a mean
    # (run indices, outcomes[runs, facts]) for runs scored on the same facts, resampled jointly
    paired: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


@dataclass(frozen=True)
class Group:
    """One P(F) curve and what places it on the cross-size law."""

    label: str
    model: str
    params: float  # N, as the caller defined it
    tokens: float  # D
    condition: tuple[tuple[str, str], ...]  # settings that vary across the sweep; one law per condition
    curve: Curve

    @property
    def compute(self) -> float:
        return 6.0 * self.params * self.tokens


# ---------------------------------------------------------------------------------------------
# P(F) per model


@dataclass(frozen=True)
class FormFit:
    """One fitted form P = floor + a F^b exp(-cF)."""

    a: float
    b: float
    c: float
    floor: float
    r2: float

    @property
    def f_star(self) -> float | None:
        """b/c where it is a maximum inside (0, inf); never a number otherwise."""
        return self.b / self.c if self.b > 0 and self.c > 0 else None

    def __call__(self, freq: np.ndarray) -> np.ndarray:
        return self.floor + self.a * freq**self.b * np.exp(-self.c * freq)


@dataclass(frozen=True)
class CurveFit:
    """What one P(F) curve yields; numbers are None where they do not exist."""

    status: str  # "ok" | "no interior optimum" | "not fitted"
    message: str
    freq_span: tuple[float, float] | None
    baseline: float | None  # mean accuracy at F = 0, the no-injection control
    plain: FormFit | None = None
    floored: FormFit | None = None
    boot: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))  # (a, b, c) per resample
    model_free: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def f_star(self) -> float | None:
        return self.plain.f_star if self.status == "ok" else None

    @property
    def in_range(self) -> bool | None:
        if self.f_star is None or self.freq_span is None:
            return None
        return self.freq_span[0] <= self.f_star <= self.freq_span[1]

    @property
    def f_star_boot(self) -> np.ndarray:
        return _optimum(self.boot[:, 1], self.boot[:, 2])

    @property
    def f_star_ci(self) -> Interval | None:
        return _interval(self.f_star_boot) if self.f_star is not None else None

    @property
    def interior_share(self) -> float | None:
        """Share of resamples with an interior optimum: low values mean F* is barely identified."""
        b, c = self.boot[:, 1], self.boot[:, 2]
        drawn = ~np.isnan(b)
        return float(np.mean((b > 0) & (c > 0), where=drawn)) if drawn.any() else None

    @property
    def collapse_f(self) -> float | None:
        """The F > F* where the fitted P falls to half its peak: how sharp the collapse is."""
        return float(self.f_star * _collapse_ratio(self.plain.b)) if self.f_star is not None else None

    @property
    def collapse_ci(self) -> Interval | None:
        if self.collapse_f is None:
            return None
        with np.errstate(invalid="ignore", over="ignore"):
            return _interval(self.f_star_boot * _collapse_ratio(self.boot[:, 1]))


def _smoothed(acc: np.ndarray, n_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy kept off 0 and 1 (Laplace) and its inverse binomial variance; unit weights
    where only a mean is known."""
    known = np.isfinite(n_items)
    n = np.where(known, n_items, 1.0)
    p = np.where(known, (acc * n + 1) / (n + 2), np.clip(acc, 1e-3, 1 - 1e-3))
    return p, np.where(known, n / (p * (1 - p)), 1.0)


def _loglinear(freq: np.ndarray, acc: np.ndarray, n_items: np.ndarray, mult: np.ndarray,
               floor: float) -> np.ndarray:
    """log(P - floor) = log a + b log F - c F is linear: weighted least squares in closed form,
    batched over resamples (B, R); the start of the refinement."""
    p, w = _smoothed(acc, n_items)
    excess = np.maximum(p - floor, 1e-3)
    design = np.stack([np.ones_like(freq), np.log(freq), -freq / freq.max()], axis=-1)
    weighted = design.T * (mult * w * excess**2)[..., None, :]  # var log(P - floor) = var P / (P - floor)^2
    normal = weighted @ design + 1e-9 * np.eye(3)
    theta = np.linalg.solve(normal, (weighted @ np.log(excess)[..., None]))[..., 0]
    return np.clip(theta, P_LOWER, P_UPPER)


def _residuals(theta: np.ndarray, freq: np.ndarray, acc: np.ndarray, weight: np.ndarray,
               floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Weighted residuals (B, R) and Jacobian (B, R, 3) of P = floor + a F^b exp(-cF) in P space."""
    log_f, scaled = np.log(freq), freq / freq.max()
    model = np.exp(theta[:, :1] + theta[:, 1:2] * log_f - theta[:, 2:] * scaled)
    root = np.sqrt(weight)
    basis = np.stack(np.broadcast_arrays(np.ones_like(model), log_f, -scaled), axis=-1)
    return root * (floor + model - acc), (root * model)[..., None] * basis


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    clipped = np.minimum(np.abs(r), delta)
    return clipped * (np.abs(r) - clipped / 2)


def _lm(fun: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], theta: np.ndarray,
        lower: np.ndarray, upper: np.ndarray, delta: float = np.inf, iters: int = 200) -> np.ndarray:
    """Levenberg-Marquardt on a batch of independent problems at once (the bootstrap): scipy
    solves one problem per call, far too slow for thousands of resamples. Bounds by projection,
    a Huber loss by reweighting; the objective is the same as the one-off scipy fits."""
    theta = np.clip(theta, lower, upper)
    r, jac = fun(theta)
    cost = _huber(r, delta).sum(-1)
    lam = np.full(len(theta), 1e-3)
    eye = np.eye(theta.shape[1])
    for _ in range(iters):
        w = np.minimum(delta / np.maximum(np.abs(r), 1e-300), 1.0)
        jtw = np.swapaxes(jac, 1, 2) * w[:, None, :]
        hess = jtw @ jac
        damping = lam[:, None, None] * (np.einsum("bii->bi", hess)[..., None] * eye + 1e-12 * eye)
        step = np.linalg.solve(hess + damping, jtw @ r[..., None])[..., 0]
        trial = np.clip(theta - step, lower, upper)
        r_new, jac_new = fun(trial)
        cost_new = _huber(r_new, delta).sum(-1)
        better = cost_new < cost
        moved = np.abs(trial - theta).max(-1)
        theta = np.where(better[:, None], trial, theta)
        r = np.where(better[:, None], r_new, r)
        jac = np.where(better[:, None, None], jac_new, jac)
        cost = np.where(better, cost_new, cost)
        lam = np.where(better, lam / 3, lam * 4)
        if np.all((better & (moved < 1e-10)) | (lam > 1e10)):
            break
    return theta


def _form(theta: np.ndarray, freq: np.ndarray, acc: np.ndarray, floor: float) -> FormFit:
    fit = FormFit(float(np.exp(theta[0])), float(theta[1]), float(theta[2] / freq.max()), floor, np.nan)
    resid, spread = acc - fit(freq), acc - acc.mean()
    return replace(fit, r2=float(1 - resid @ resid / (spread @ spread)))


def fit_form(freq: np.ndarray, acc: np.ndarray, n_items: np.ndarray, floor: float = 0.0) -> FormFit:
    """Closed-form start, refined by scipy's bounded trust-region least squares in P space
    (binomial weights): the log-linear fit alone over-weights runs near chance."""
    ones = np.ones((1, acc.size))
    start = _loglinear(freq, acc[None], n_items, ones, floor)[0]
    weight = _smoothed(acc, n_items)[1][None]
    res = optimize.least_squares(
        lambda t: _residuals(t[None], freq, acc[None], weight, floor)[0][0], start,
        jac=lambda t: _residuals(t[None], freq, acc[None], weight, floor)[1][0],
        bounds=(P_LOWER, P_UPPER), method="trf")
    return _form(res.x, freq, acc, floor)


def fit_form_batch(freq: np.ndarray, acc: np.ndarray, n_items: np.ndarray, mult: np.ndarray,
                   floor: float = 0.0) -> np.ndarray:
    """The estimator of fit_form on every resample (rows of acc, run multiplicities mult) at
    once; returns (B, 3) rows of (log a, b, c * F_max)."""
    start = _loglinear(freq, acc, n_items, mult, floor)
    weight = mult * _smoothed(acc, n_items)[1]
    return _lm(lambda t: _residuals(t, freq, acc, weight, floor), start, P_LOWER, P_UPPER)


def resample_acc(curve: Curve, n_boot: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """Bootstrap accuracies and run multiplicities, both (B, R); None if nothing varies.

    Replicate runs (seeds) are drawn with replacement within each F, so a seed missing at some F
    can never empty it; then items: jointly across runs scored on the same facts (a hard fact is
    hard at every F), as a binomial draw where only the item count is known (the same law as
    resampling the items), not at all where only a mean is known. Resampling both levels counts
    item noise twice where seeds are present: conservative, wider intervals."""
    paired = np.zeros(curve.acc.size, bool)
    for runs, _ in curve.paired:
        paired[runs] = True
    counted = np.isfinite(curve.n_items) & ~paired
    _, stratum, replicates = np.unique(curve.freq, return_inverse=True, return_counts=True)
    if not (paired.any() or counted.any() or (replicates > 1).any()):
        return None
    acc = np.tile(curve.acc, (n_boot, 1))
    n = curve.n_items[counted].astype(int)
    acc[:, counted] = rng.binomial(n, curve.acc[counted], size=(n_boot, n.size)) / n
    for runs, outcomes in curve.paired:
        facts = outcomes.shape[1]
        counts = rng.multinomial(facts, np.full(facts, 1 / facts), size=n_boot)
        acc[:, runs] = counts @ outcomes.T / facts
    mult = np.ones_like(acc)
    for k in np.flatnonzero(replicates > 1):
        runs = np.flatnonzero(stratum == k)
        mult[:, runs] = rng.multinomial(runs.size, np.full(runs.size, 1 / runs.size), size=n_boot)
    return acc, mult


def _optimum(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """F* per resample: b/c at an interior maximum, +inf where P still rises at every F
    (c <= 0 < b), 0 where it only falls, NaN where it has no maximum at all."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.select([(b > 0) & (c > 0), b > 0, c > 0], [b / c, np.inf, 0.0], np.nan)


def _collapse_ratio(b: np.ndarray | float) -> np.ndarray:
    """F_collapse / F*, which depends on b only: x > 1 with log x - x + 1 = -ln 2 / b, i.e. the
    lower branch of Lambert's W."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -special.lambertw(-np.exp(-1 - np.log(2) / b), k=-1).real


def _interval(samples: np.ndarray, positive: bool = True) -> Interval | None:
    """Percentile interval of the non-NaN samples. For a positive quantity a bound at 0 or
    infinity means unbounded on that side and is None, never a number."""
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return None
    bounds = np.quantile(samples, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], method="inverted_cdf")
    lo, hi = (float(v) if np.isfinite(v) and (v > 0 or not positive) else None for v in bounds)
    return lo, hi


def _flat_p_value(acc: np.ndarray, n_items: np.ndarray) -> float | None:
    """p-value of 'P does not depend on F' (chi-square against binomial noise); where only
    means are known, only exactly equal accuracies count as flat. None if not flat."""
    if not np.all(np.isfinite(n_items)):
        return 1.0 if np.ptp(acc) == 0 else None
    w = _smoothed(acc, n_items)[1]
    mean = w @ acc / w.sum()
    p_value = float(stats.chi2.sf(w @ (acc - mean) ** 2, acc.size - 1))
    return p_value if p_value > 1 - LEVEL else None


def model_free_peak(freq: np.ndarray, acc: np.ndarray, n_items: np.ndarray) -> float | None:
    """Argmax of a smoothing spline of P over log F (smoothness by GCV): a check on F* that
    assumes no functional form. None with fewer than 5 frequencies or a peak at an edge."""
    distinct, inverse = np.unique(freq, return_inverse=True)
    if distinct.size < 5:
        return None
    w = _smoothed(acc, n_items)[1]
    w_sum = np.bincount(inverse, w)
    spline = make_smoothing_spline(np.log(distinct), np.bincount(inverse, w * acc) / w_sum,
                                   w=w_sum / w_sum.mean())
    grid = np.linspace(np.log(distinct[0]), np.log(distinct[-1]), 1001)
    peak = int(np.argmax(spline(grid)))
    return float(np.exp(grid[peak])) if 0 < peak < grid.size - 1 else None


def _peak_missing(freq: np.ndarray, acc: np.ndarray, n_items: np.ndarray) -> str | None:
    """Why the data show no interior peak, or None if they rise to a maximum and fall after it
    beyond binomial noise (one-sided two-proportion tests against both ends of the sweep).
    b, c > 0 alone is not enough: a plateau at P = 1 is also fitted with a peak."""
    distinct, inverse = np.unique(freq, return_inverse=True)
    known = bool(np.all(np.isfinite(n_items)))
    n = np.bincount(inverse, n_items if known else np.ones_like(acc))
    p = np.bincount(inverse, acc * n_items if known else acc) / n
    top = int(np.argmax(p))
    for end, side in ((0, "smallest"), (distinct.size - 1, "largest")):
        if top == end:
            return f"P is highest at the {side} F swept ({p[top]:.2f} at F = {distinct[top]:g})"
        pooled = (p[top] * n[top] + p[end] * n[end]) / (n[top] + n[end])
        z = (p[top] - p[end]) / np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n[top] + 1 / n[end]))
        p_value = float(stats.norm.sf(z))
        if known and p_value > 1 - LEVEL:
            return (f"P at the {side} F ({p[end]:.2f} at F = {distinct[end]:g}) is not below its maximum "
                    f"({p[top]:.2f} at F = {distinct[top]:g}) beyond noise (p = {p_value:.2g})")
    return None


def _no_optimum(fit: FormFit) -> str:
    if fit.b > 0:
        return f"c = {fit.c:.3g} <= 0, the fitted P still rises at the largest F"
    if fit.c > 0:
        return f"b = {fit.b:.3g} <= 0, the fitted P falls from the smallest F"
    return f"b = {fit.b:.3g} and c = {fit.c:.3g}, the fitted P has no maximum"


def fit_curve(curve: Curve, n_boot: int, rng: np.random.Generator) -> CurveFit:
    """Both forms, F* with its bootstrap interval, the collapse point and a model-free check.
    F = 0 runs are the no-injection baseline: F^b is 0 there, so they stay out of the fits."""
    pos = curve.freq > 0
    baseline = float(curve.acc[~pos].mean()) if (~pos).any() else None
    freq, acc, n_items = curve.freq[pos], curve.acc[pos], curve.n_items[pos]
    distinct = np.unique(freq)
    span = (float(distinct[0]), float(distinct[-1])) if distinct.size else None
    if distinct.size < 3:
        return CurveFit("not fitted", f"needs at least 3 distinct frequencies F > 0, got {distinct.size}",
                        span, baseline)
    flat = _flat_p_value(acc, n_items)
    if flat is not None:
        return CurveFit("no interior optimum", "no interior optimum: accuracy does not vary with F "
                        f"beyond noise (p = {flat:.2g})", span, baseline)
    plain, floored = fit_form(freq, acc, n_items), fit_form(freq, acc, n_items, CHANCE)
    model_free = model_free_peak(freq, acc, n_items)
    notes = [] if model_free is not None else ["model-free peak: none inside the sweep" if distinct.size >= 5
                                                 else "model-free peak: needs 5 or more frequencies"]
    missing = _peak_missing(freq, acc, n_items) or (None if plain.f_star else _no_optimum(plain))
    if missing:
        return CurveFit("no interior optimum", f"no interior optimum: {missing}", span, baseline, plain, floored,
                        model_free=model_free, notes=tuple(notes))
    drawn = resample_acc(curve, n_boot, rng)
    boot = np.full((n_boot, 3), np.nan)
    if drawn is None:
        notes.append("no bootstrap: no per-item outcomes, item counts or seeds to resample")
    elif n_boot:
        theta = fit_form_batch(freq, drawn[0][:, pos], n_items, drawn[1][:, pos])
        boot = np.column_stack([np.exp(theta[:, 0]), theta[:, 1], theta[:, 2] / freq.max()])
    fit = CurveFit("ok", f"F* = {plain.f_star:.3g}", span, baseline, plain, floored, boot, model_free)
    if not fit.in_range:
        notes.append(f"F* = {fit.f_star:.3g} lies outside the swept range [{span[0]:g}, {span[1]:g}]")
    return replace(fit, notes=tuple(notes))


# ---------------------------------------------------------------------------------------------
# F*(C) across sizes


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
        log_a = self.boot[:, 0] + self.boot[:, 1] * np.log(self.law.c_ref)
        with np.errstate(over="ignore"):
            values = {"A": np.exp(log_a), "alpha": self.boot[:, 1], "E": np.exp(self.boot[:, 2])}[name]
        return _interval(values, positive=name != "alpha")

    def band(self, compute: np.ndarray) -> np.ndarray | None:
        """Pointwise interval (2, T) of the bootstrap laws at compute; None without resamples."""
        kept = self.boot[~np.isnan(self.boot[:, 1])]
        if not kept.size:
            return None
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
    return (np.array([y.min() - 30, -ALPHA_MAX, y.min() - 30]),
            np.array([y.max() + 30, ALPHA_MAX, y.max()]))


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
        for share in ((0.0, 0.3, 0.6, 0.9) if floor else (0.0,)):
            e = share * f.min()
            starts.append(np.clip([np.log(np.median(f) - e), alpha, np.log(e) if e else lower[2]][:size],
                                  lower[:size], upper[:size]))
    starts.sort(key=lambda s: loss(s)[0])
    best = min((optimize.minimize(loss, s, jac=True, method="L-BFGS-B", bounds=list(zip(lower[:size], upper[:size])))
                for s in starts[:3]), key=lambda res: res.fun)
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
    alpha = optimize.minimize_scalar(lambda a: profile(a)[0], bounds=(best - step, best + step),
                                     method="bounded").x
    amplitude, floor = profile(alpha)[1]
    with np.errstate(divide="ignore"):
        return np.array([np.log(amplitude), alpha, np.log(floor)])


def _distinct(valid: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Number of distinct x among the valid entries of each row."""
    return ((valid[:, :, None] & (x[:, None] == np.unique(x)[None, :])).any(1)).sum(1)


def _law_boot(theta: np.ndarray, x: np.ndarray, y: np.ndarray, f_boot: np.ndarray, delta: float
              ) -> np.ndarray:
    """The second bootstrap level: the law refitted to each joint draw of the models' F* (each
    from its own bootstrap), starting at the point fit. Models without an interior optimum in a
    draw drop out of it; draws left with fewer than 3 distinct C give NaN."""
    valid = np.isfinite(f_boot) & (f_boot > 0)
    y_boot = np.log(np.where(valid, f_boot, 1.0))
    mask = valid.astype(float)
    fitted = _lm(lambda t: (mask * (_law_log(t, x) - y_boot), mask[..., None] * _law_jac(t, x)),
                 np.tile(theta, (len(y_boot), 1)), *_law_bounds(y), delta)
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


def _fit_with_boot(compute: np.ndarray, f_star: np.ndarray, f_boot: np.ndarray, delta: float
                   ) -> tuple[Law, np.ndarray, np.ndarray]:
    c_ref = float(np.exp(np.log(compute).mean()))
    x, y = np.log(compute / c_ref), np.log(f_star)
    law = Law(fit_law(x, y, delta), c_ref)
    return law, _law_boot(law.theta, x, y, f_boot, delta), y - law.log_f_star(compute)


def _predictive(law: Law, boot: np.ndarray, resid: np.ndarray, compute: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Draws (B, T) of a new model's F*: bootstrap laws plus a resampled residual of the fit
    (inflated for the 3 fitted parameters), so the interval covers a model, not only the mean law."""
    boot = boot[~np.isnan(boot[:, 1])]
    scale = np.sqrt(resid.size / (resid.size - 3)) if resid.size > 3 else 1.0
    noise = rng.choice(resid * scale, size=(len(boot), compute.size))
    return np.exp(_law_log(boot, np.log(compute / law.c_ref)) + noise)


def _rollout(labels: Sequence[str], params: np.ndarray, compute: np.ndarray, f_star: np.ndarray,
             f_boot: np.ndarray, rng: np.random.Generator, delta: float) -> tuple[Cut, ...]:
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
        holdouts = tuple(Holdout(labels[i], float(f_star[i]), float(np.exp(law.log_f_star(compute[i]))),
                                 _interval(draws[:, j])) for j, i in enumerate(held))
        cuts.append(Cut(float(top), int(train.sum()), holdouts))
    return tuple(cuts)


def fit_across(condition: tuple[tuple[str, str], ...], labels: Sequence[str], params: np.ndarray,
               compute: np.ndarray, f_star: np.ndarray, f_boot: np.ndarray,
               targets: Sequence[tuple[float, float]], rng: np.random.Generator,
               delta: float = HUBER_DELTA) -> LawResult:
    """The law with its bootstrap intervals, the E = 0 comparison, the variable-projection
    check, predictions at target (N, D) and the rollout validation."""
    if np.unique(compute).size < 3:
        got = ", ".join(labels) or "none"
        return LawResult(condition, "not fitted", "the cross-size law needs an in-range F* at 3 or more "
                         f"distinct C = 6ND; got {np.unique(compute).size} ({got})")
    law, boot, resid = _fit_with_boot(compute, f_star, f_boot, delta)
    x, y = np.log(compute / law.c_ref), np.log(f_star)
    power = Law(fit_law(x, y, delta, floor=False), law.c_ref)
    resid_power = y - power.log_f_star(compute)
    target = np.array([6.0 * n * d for n, d in targets])
    draws = _predictive(law, boot, resid, target, rng)
    predictions = tuple(Prediction(n, d, float(np.exp(law.log_f_star(c))), _interval(draws[:, i]))
                        for i, ((n, d), c) in enumerate(zip(targets, target)))
    return LawResult(
        condition, "ok", f"fitted on {len(labels)} points", tuple(labels), params, compute, f_star,
        law, power, Law(varpro_law(x, y), law.c_ref), boot,
        _r2_log(y, y - resid), _r2_log(y, y - resid_power), _aicc(resid, 3), _aicc(resid_power, 2),
        predictions, _rollout(labels, params, compute, f_star, f_boot, rng, delta))


# ---------------------------------------------------------------------------------------------
# Token budgets and the whole sweep


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


@dataclass(frozen=True)
class Analysis:
    groups: tuple[Group, ...]
    fits: tuple[CurveFit, ...]
    laws: tuple[LawResult, ...]
    budgets: tuple[BudgetTrend, ...]
    n_boot: int


def analyse(groups: Sequence[Group], n_boot: int = 2000, seed: int = 0,
            targets: Sequence[tuple[float, float]] = (), delta: float = HUBER_DELTA) -> Analysis:
    """Every group's P(F) fit, then one cross-size law per condition on the in-range optima."""
    if not groups:
        raise FitError("no runs to fit")
    streams = np.random.SeedSequence(seed).spawn(len(groups) + 1)
    fits = [fit_curve(g.curve, n_boot, np.random.default_rng(s)) for g, s in zip(groups, streams)]
    if all(f.status == "not fitted" for f in fits):
        raise FitError("nothing to fit: " + "; ".join(f"{g.label}: {f.message}" for g, f in zip(groups, fits)))
    rng = np.random.default_rng(streams[-1])
    laws = []
    for condition in sorted({g.condition for g in groups}):
        members = [(g, f) for g, f in zip(groups, fits) if g.condition == condition]
        used = [(g, f) for g, f in members if f.in_range]
        boot = np.column_stack([f.f_star_boot for _, f in used]) if used else np.empty((n_boot, 0))
        law = fit_across(condition, [g.label for g, _ in used], np.array([g.params for g, _ in used]),
                         np.array([g.compute for g, _ in used]), np.array([f.f_star for _, f in used]),
                         boot, targets, rng, delta)
        left_out = [g.label for g, f in members if not f.in_range]
        if left_out:
            law = replace(law, message=f"{law.message}; left out (no F* inside the sweep): {', '.join(left_out)}")
        laws.append(law)
    return Analysis(tuple(groups), tuple(fits), tuple(laws), budget_trends(groups, fits), n_boot)


def simulate_curve(a: float, b: float, c: float, freqs: np.ndarray, n_items: int,
                   rng: np.random.Generator, seeds: int = 1) -> Curve:
    """Runs drawn from the fitted model itself (each fact correct with probability P(F), the same
    facts at every F of a seed): the null the fits assume, for recovery tests and the benchmark."""
    p = np.clip(a * freqs**b * np.exp(-c * freqs), 0, 1)
    outcomes = [(rng.random((freqs.size, n_items)) < p[:, None]).astype(float) for _ in range(seeds)]
    runs = np.arange(seeds * freqs.size).reshape(seeds, freqs.size)
    return Curve(np.tile(freqs, seeds).astype(float), np.concatenate([o.mean(1) for o in outcomes]),
                 np.full(seeds * freqs.size, float(n_items)), tuple(zip(runs, outcomes)))
