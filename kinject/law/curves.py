"""Per-model P(F) fits of the knowledge-infusion scaling law (Lv et al. 2025), made robust.

Memorization accuracy P at injection frequency F follows P = a F^b exp(-cF), whose optimum
F* = b/c exists only when b > 0 and c > 0; the chance-floored form 0.25 + a F^b exp(-cF) is
fitted beside it, and every optimum carries a bootstrap interval. Whether there is an optimum at
all is law.peak's verdict, not the sign of c. An unbounded score (a margin, a log-probability) has
no chance level: its floor is the F = 0 control. The batched solver (_lm, _huber) and the
percentile interval live here because law.scaling reuses them on the cross-size law.
Pure numpy/scipy on arrays: loading and reporting live in law.runs and law.report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypedDict

import numpy as np
from scipy import optimize, special
from scipy.interpolate import make_smoothing_spline

from kinject.law.peak import ALPHA, PeakTest, Saturating, aicc, fit_saturating, peak_test

CHANCE = 0.25
LEVEL = 0.95
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
    bounded: bool = True  # an accuracy in [0, 1]; False: an unbounded score
    chance: float = CHANCE  # an accuracy's chance level: CHANCE for 4-way multiple choice, 0 for generative recall

    def digest(self) -> int:
        """A fingerprint of the curve's numbers. Bootstrap streams are seeded from it, so that a group's
        p-values and intervals depend on its own runs, not on which other runs were read with them."""
        hashed = hashlib.blake2b(digest_size=8)
        for array in (self.freq, self.acc, self.n_items, *(part for pair in self.paired for part in pair)):
            hashed.update(np.ascontiguousarray(array, dtype=float).tobytes())
        return int.from_bytes(hashed.digest(), "little")

    def rng(self, seed: int) -> np.random.Generator:
        return np.random.default_rng([seed, self.digest()])


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
    test: PeakTest | None = None
    saturating: Saturating | None = None
    aicc: tuple[float | None, float | None] = (None, None)  # rise-and-fall (plain), saturating
    preferred: str | None = None  # "rise-and-fall" | "saturating", by AICc (equal parameter counts: by RSS)

    @property
    def f_star(self) -> float | None:
        if self.status != "ok":
            return None
        assert self.plain is not None  # an "ok" fit always carries its plain form
        return self.plain.f_star

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
        if self.f_star is None:
            return None
        assert self.plain is not None  # f_star exists only on an "ok" fit, which carries its plain form
        return float(self.f_star * _collapse_ratio(self.plain.b))

    @property
    def collapse_ci(self) -> Interval | None:
        if self.collapse_f is None:
            return None
        with np.errstate(invalid="ignore", over="ignore"):
            return _interval(self.f_star_boot * _collapse_ratio(self.boot[:, 1]))


def _smoothed(acc: np.ndarray, n_items: np.ndarray, bounded: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy kept off 0 and 1 (Laplace) and its inverse binomial variance; unit weights
    where only a mean is known, and for an unbounded score (taken as it is)."""
    if not bounded:
        return acc, np.ones_like(acc)
    known = np.isfinite(n_items)
    n = np.where(known, n_items, 1.0)
    p = np.where(known, (acc * n + 1) / (n + 2), np.clip(acc, 1e-3, 1 - 1e-3))
    return p, np.where(known, n / (p * (1 - p)), 1.0)


def _loglinear(
    freq: np.ndarray, acc: np.ndarray, n_items: np.ndarray, mult: np.ndarray, floor: float, bounded: bool
) -> np.ndarray:
    """log(P - floor) = log a + b log F - c F is linear: weighted least squares in closed form,
    batched over resamples (B, R); the start of the refinement."""
    p, w = _smoothed(acc, n_items, bounded)
    excess = np.maximum(p - floor, 1e-3)
    design = np.stack([np.ones_like(freq), np.log(freq), -freq / freq.max()], axis=-1)
    weighted = design.T * (mult * w * excess**2)[..., None, :]  # var log(P - floor) = var P / (P - floor)^2
    normal = weighted @ design + 1e-9 * np.eye(3)
    theta = np.linalg.solve(normal, (weighted @ np.log(excess)[..., None]))[..., 0]
    return np.clip(theta, P_LOWER, P_UPPER)


def _residuals(
    theta: np.ndarray, freq: np.ndarray, acc: np.ndarray, weight: np.ndarray, floor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted residuals (B, R) and Jacobian (B, R, 3) of P = floor + a F^b exp(-cF) in P space."""
    log_f, scaled = np.log(freq), freq / freq.max()
    model = np.exp(theta[:, :1] + theta[:, 1:2] * log_f - theta[:, 2:] * scaled)
    root = np.sqrt(weight)
    basis = np.stack(np.broadcast_arrays(np.ones_like(model), log_f, -scaled), axis=-1)
    return root * (floor + model - acc), (root * model)[..., None] * basis


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    clipped = np.minimum(np.abs(r), delta)
    return clipped * (np.abs(r) - clipped / 2)


def _lm(
    fun: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    theta: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    delta: float = np.inf,
    iters: int = 200,
) -> np.ndarray:
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
    return replace(fit, r2=float(1 - resid @ resid / (spread @ spread)) if spread.any() else np.nan)


def fit_form(
    freq: np.ndarray, acc: np.ndarray, n_items: np.ndarray, floor: float = 0.0, bounded: bool = True
) -> FormFit:
    """Closed-form start, refined by scipy's bounded trust-region least squares in P space
    (binomial weights): the log-linear fit alone over-weights runs near chance."""
    ones = np.ones((1, acc.size))
    start = _loglinear(freq, acc[None], n_items, ones, floor, bounded)[0]
    weight = _smoothed(acc, n_items, bounded)[1][None]
    res = optimize.least_squares(
        lambda t: _residuals(t[None], freq, acc[None], weight, floor)[0][0],
        start,
        jac=lambda t: _residuals(t[None], freq, acc[None], weight, floor)[1][0],
        bounds=(P_LOWER, P_UPPER),
        method="trf",
    )
    return _form(res.x, freq, acc, floor)


def fit_form_batch(
    freq: np.ndarray, acc: np.ndarray, n_items: np.ndarray, mult: np.ndarray, floor: float = 0.0, bounded: bool = True
) -> np.ndarray:
    """The estimator of fit_form on every resample (rows of acc, run multiplicities mult) at
    once; returns (B, 3) rows of (log a, b, c * F_max)."""
    start = _loglinear(freq, acc, n_items, mult, floor, bounded)
    weight = mult * _smoothed(acc, n_items, bounded)[1]
    return _lm(lambda t: _residuals(t, freq, acc, weight, floor), start, P_LOWER, P_UPPER)


def resample_acc(curve: Curve, n_boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
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


def model_free_peak(freq: np.ndarray, acc: np.ndarray, n_items: np.ndarray, bounded: bool = True) -> float | None:
    """Argmax of a smoothing spline of P over log F (smoothness by GCV): a check on F* that
    assumes no functional form. None with fewer than 5 frequencies or a peak at an edge."""
    distinct, inverse = np.unique(freq, return_inverse=True)
    if distinct.size < 5:
        return None
    w = _smoothed(acc, n_items, bounded)[1]
    w_sum = np.bincount(inverse, w)
    spline = make_smoothing_spline(np.log(distinct), np.bincount(inverse, w * acc) / w_sum, w=w_sum / w_sum.mean())
    grid = np.linspace(np.log(distinct[0]), np.log(distinct[-1]), 1001)
    peak = int(np.argmax(spline(grid)))
    return float(np.exp(grid[peak])) if 0 < peak < grid.size - 1 else None


class _Verdict(TypedDict):
    """The CurveFit fields that the shape test and the model comparison fill in."""

    test: PeakTest
    saturating: Saturating
    aicc: tuple[float | None, float | None]
    preferred: str


def _no_optimum(fit: FormFit) -> str:
    if fit.b > 0:
        return f"c = {fit.c:.3g} <= 0, the fitted P still rises at the largest F"
    if fit.c > 0:
        return f"b = {fit.b:.3g} <= 0, the fitted P falls from the smallest F"
    return f"b = {fit.b:.3g} and c = {fit.c:.3g}, the fitted P has no maximum"


def _missing(test: PeakTest, preferred: str, plain: FormFit, aicc_gate: bool) -> str | None:
    """Why the verdict is 'no interior optimum', or None if the shape test (and, with `aicc_gate`, the model
    comparison) finds one."""
    lo, top, hi = (test.point(i) for i in (0, test.top, -1))
    if test.rise <= 0 and test.fall <= 0:
        return "P does not vary with F"
    if test.rise <= 0:
        return f"P is highest at the smallest F swept ({top})"
    if test.fall <= 0:
        return (
            f"P is highest at the largest F swept ({hi})"
            if top == hi
            else f"P does not fall after its maximum ({top}; {hi})"
        )
    if test.p_rise is not None and test.p_rise >= ALPHA:
        return f"the rise to the maximum ({lo} to {top}) is within noise (p = {test.p_rise:.2g})"
    if test.p_fall is not None and test.p_fall >= ALPHA:
        return (
            f"the fall after the maximum ({top} to {hi}) is within noise (p = {test.p_fall:.2g}, "
            "bootstrap against the nearest monotone curve)"
        )
    if aicc_gate and preferred != "rise-and-fall":
        return "a monotone saturating curve fits as well (AICc)"
    return None if plain.f_star else _no_optimum(plain)


def fit_curve(
    curve: Curve, n_boot: int, rng: np.random.Generator, interval: bool = True, aicc_gate: bool = True
) -> CurveFit:
    """The verdict (law.peak: a bootstrap shape test and a model comparison, which `aicc_gate=False` leaves
    out of it), both forms, F* with its bootstrap interval (unless `interval` is False: the verdict alone),
    the collapse point and a model-free check. F = 0 runs are the no-injection baseline: F^b is 0 there, so
    they stay out of the fits (an unbounded score's floor is their mean)."""
    pos = curve.freq > 0
    baseline = float(curve.acc[~pos].mean()) if (~pos).any() else None
    freq, acc, n_items = curve.freq[pos], curve.acc[pos], curve.n_items[pos]
    distinct = np.unique(freq)
    span = (float(distinct[0]), float(distinct[-1])) if distinct.size else None
    if distinct.size < 3:
        return CurveFit(
            "not fitted", f"needs at least 3 distinct frequencies F > 0, got {distinct.size}", span, baseline
        )
    floor = curve.chance
    if not curve.bounded:
        if baseline is None:
            return CurveFit("not fitted", "an unbounded score needs F = 0 runs: their mean is its floor", span, None)
        floor = baseline
    plain = fit_form(freq, acc, n_items, 0.0 if curve.bounded else floor, curve.bounded)
    floored = fit_form(freq, acc, n_items, curve.chance) if curve.bounded and curve.chance > 0 else None
    weight = _smoothed(acc, n_items, curve.bounded)[1]
    saturating = fit_saturating(freq, acc, weight, floor, 1.0 if curve.bounded else None)
    residuals = [np.sqrt(weight) * (form(freq) - acc) for form in (plain, saturating)]
    scores = (aicc(residuals[0], 3), aicc(residuals[1], 3))
    preferred = "rise-and-fall" if residuals[0] @ residuals[0] < residuals[1] @ residuals[1] else "saturating"
    drawn = resample_acc(curve, n_boot, rng) if n_boot else None
    test = peak_test(freq, acc, None if drawn is None else (drawn[0][:, pos], drawn[1][:, pos]))
    notes = (
        []
        if drawn is not None
        else [
            "no peak test: "
            + (
                "no resamples (--bootstrap 0)"
                if not n_boot
                else "no per-item outcomes, item counts or seeds to resample"
            )
        ]
    )
    verdict = _Verdict(test=test, saturating=saturating, aicc=scores, preferred=preferred)
    missing = _missing(test, preferred, plain, aicc_gate)
    if missing:
        return CurveFit(
            "no interior optimum",
            f"no interior optimum: {missing}",
            span,
            baseline,
            plain,
            floored,
            notes=tuple(notes),
            **verdict,
        )
    model_free = model_free_peak(freq, acc, n_items, curve.bounded)
    if model_free is None:
        notes.append(
            "model-free peak: none inside the sweep"
            if distinct.size >= 5
            else "model-free peak: needs 5 or more frequencies"
        )
    boot = np.full((n_boot, 3), np.nan)
    if drawn is not None and interval:
        theta = fit_form_batch(freq, drawn[0][:, pos], n_items, drawn[1][:, pos], plain.floor, curve.bounded)
        boot = np.column_stack([np.exp(theta[:, 0]), theta[:, 1], theta[:, 2] / freq.max()])
    fit = CurveFit("ok", f"F* = {plain.f_star:.3g}", span, baseline, plain, floored, boot, model_free, **verdict)
    if not fit.in_range:
        assert span is not None  # set whenever there are 3 or more distinct frequencies
        notes.append(f"F* = {fit.f_star:.3g} lies outside the swept range [{span[0]:g}, {span[1]:g}]")
    return replace(fit, notes=tuple(notes))


def simulate_runs(
    freqs: np.ndarray, p: np.ndarray, n_items: int, rng: np.random.Generator, seeds: int = 1, seed_sd: float = 0.0
) -> Curve:
    """Runs of a known P(F): each seed moves P at each F by N(0, seed_sd) (training noise), then each
    fact is correct with that probability; the same facts at every F and seed, as in a sweep."""
    noisy = np.clip(p[None] + rng.normal(0, seed_sd, (seeds, freqs.size)) if seed_sd else np.tile(p, (seeds, 1)), 0, 1)
    outcomes = (rng.random((seeds, freqs.size, n_items)) < noisy[..., None]).astype(float).reshape(-1, n_items)
    runs = np.arange(seeds * freqs.size)
    return Curve(
        np.tile(freqs, seeds).astype(float), outcomes.mean(1), np.full(runs.size, float(n_items)), ((runs, outcomes),)
    )


def falling_curve(freqs: np.ndarray, peak: float, f_star: float, fall: float) -> np.ndarray:
    """P = a F^b e^(-cF) at freqs, with its maximum `peak` at f_star and `fall` lower at the largest F:
    the collapse the verdict should find, for simulations."""
    b = np.log(1 - fall / peak) / (np.log(freqs[-1] / f_star) - (freqs[-1] / f_star - 1))
    return peak * (freqs / f_star) ** b * np.exp(-b * (freqs / f_star - 1))


def simulate_curve(
    a: float,
    b: float,
    c: float,
    freqs: np.ndarray,
    n_items: int,
    rng: np.random.Generator,
    seeds: int = 1,
    seed_sd: float = 0.0,
) -> Curve:
    """Runs drawn from the fitted model itself: the null the fits assume, for recovery tests and the benchmark."""
    return simulate_runs(freqs, np.clip(a * freqs**b * np.exp(-c * freqs), 0, 1), n_items, rng, seeds, seed_sd)
