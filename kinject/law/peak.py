"""Is there an interior optimum? The verdict on one P(F) curve, by two tests that must both agree.

1. A bootstrap test of the shape, paired by fact and resampling seeds, that accounts for the
   maximum having been picked after seeing the data: the rise to the highest F and the fall after
   it are compared with their distribution under the nearest monotone curve (isotonic regression,
   the least favourable null), each resample picking its own maximum again. Both must be beyond
   noise (an intersection-union test, level LEVEL with no correction).
2. A model comparison: the rise-and-fall form against a monotone saturating one with as many
   parameters, floor + (top - floor)(1 - exp(-(F/F0)^k)), by AICc on the same weights.

Pure numpy/scipy on arrays; law.curves calls it with its resamples and weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

ALPHA = 0.05


@dataclass(frozen=True)
class PeakTest:
    """The mean at each distinct F, the rise to its maximum and the fall after it, each with its p-value under
    a monotone null."""

    freqs: np.ndarray
    means: np.ndarray
    p_rise: float | None  # None: nothing to resample
    p_fall: float | None

    @property
    def top(self) -> int:
        return int(np.argmax(self.means))

    @property
    def peak_freq(self) -> float:
        return float(self.freqs[self.top])

    @property
    def rise(self) -> float:
        return float(self.means[self.top] - self.means[0])

    @property
    def fall(self) -> float:
        return float(self.means[self.top] - self.means[-1])

    def point(self, index: int) -> str:
        return f"{self.means[index]:.2f} at F = {self.freqs[index]:g}"


def _means_by_freq(values: np.ndarray, mult: np.ndarray, inverse: np.ndarray, count: int) -> np.ndarray:
    """Mean of the runs at each distinct F, weighted by run multiplicity; (B, R) -> (B, count)."""
    sums = np.zeros((values.shape[0], count))
    weights = np.zeros_like(sums)
    np.add.at(sums.T, inverse, (values * mult).T)
    np.add.at(weights.T, inverse, mult.T)
    return sums / np.maximum(weights, 1e-300)


def peak_test(freq: np.ndarray, values: np.ndarray, drawn: tuple[np.ndarray, np.ndarray] | None) -> PeakTest:
    """The shape test on runs (freq, values) and their bootstrap resamples (values, multiplicities),
    both (B, R); without resamples only the observed rise and fall are given."""
    distinct, inverse, runs = np.unique(freq, return_inverse=True, return_counts=True)
    observed = _means_by_freq(values[None], np.ones((1, values.size)), inverse, distinct.size)[0]
    test = PeakTest(distinct, observed, None, None)
    if drawn is None:
        return test
    deviation = _means_by_freq(*drawn, inverse, distinct.size) - observed
    p_values = []
    for increasing, end, stat in ((False, 0, test.rise), (True, -1, test.fall)):
        null = optimize.isotonic_regression(observed, weights=runs.astype(float), increasing=increasing).x
        curves = null + deviation
        p_values.append(float((1 + np.sum(curves.max(1) - curves[:, end] >= stat - 1e-12)) / (1 + len(curves))))
    return PeakTest(distinct, observed, *p_values)


@dataclass(frozen=True)
class Saturating:
    """P = floor + (top - floor)(1 - exp(-(F/F0)^k)): rises from floor to top and never falls."""

    floor: float
    top: float
    f0: float
    k: float

    def __call__(self, freq: np.ndarray) -> np.ndarray:
        return self.floor + (self.top - self.floor) * -np.expm1(-((freq / self.f0) ** self.k))


def fit_saturating(
    freq: np.ndarray, values: np.ndarray, weight: np.ndarray, floor: float, top_max: float | None
) -> Saturating:
    """Weighted least squares over (top, log F0, log k); `top_max` bounds an accuracy at 1."""
    root = np.sqrt(weight)
    log_f = np.log(freq)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return root * (Saturating(floor, theta[0], np.exp(theta[1]), np.exp(theta[2]))(freq) - values)

    def jacobian(theta: np.ndarray) -> np.ndarray:
        k = np.exp(theta[2])
        u = np.exp(k * (log_f - theta[1]))
        slope = (theta[0] - floor) * np.exp(-u) * u
        return root[:, None] * np.column_stack([-np.expm1(-u), -k * slope, k * (log_f - theta[1]) * slope])

    high = max(values.max(), floor + 1e-6)
    upper = [top_max if top_max is not None else high + 10 * (high - floor) + 1, log_f.max() + 5, np.log(20)]
    lower = [floor, log_f.min() - 5, np.log(0.05)]
    starts = [(min(high, upper[0]), np.median(log_f), 0.0), (min(high, upper[0]), log_f.min(), np.log(0.5))]
    best = min(
        (
            optimize.least_squares(residuals, np.clip(s, lower, upper), jac=jacobian, bounds=(lower, upper))
            for s in starts
        ),
        key=lambda r: r.cost,
    )
    return Saturating(floor, float(best.x[0]), float(np.exp(best.x[1])), float(np.exp(best.x[2])))


def aicc(residuals: np.ndarray, params: int) -> float | None:
    """AICc of a least-squares fit with Gaussian errors (the variance counted as a parameter);
    None when there are too few points for the correction."""
    n, k = residuals.size, params + 1
    if n - k - 1 <= 0:
        return None
    rss = max(float(residuals @ residuals), 1e-300)
    return n * np.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)
