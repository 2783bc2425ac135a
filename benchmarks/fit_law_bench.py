"""Wall time of the full fit_law analysis: 5 models x 8 frequencies, 2000 bootstrap resamples.

Simulated sweep (250 facts per run, per-item outcomes, F* on a known law); the timed part is
kinject.law.analysis.analyse: both P(F) forms per model, the item bootstrap, the cross-size law
with its two-level bootstrap, the E = 0 comparison, variable projection, a prediction and the
rollout.

    python benchmarks/fit_law_bench.py [--bootstrap 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kinject.law.analysis import analyse
from kinject.law.curves import Group, simulate_curve

PARAMS = np.array([1, 2, 4, 8, 16]) * 1e6
TOKENS = 1e8
FREQS = 2.0 ** np.arange(1, 9)


def sweep(rng: np.random.Generator, facts: int = 250) -> list[Group]:
    """F* = 30 (C / C_mid)^-0.5 + 8 across sizes, each curve P = a F^b e^(-cF) peaking at 0.9."""
    compute = 6 * PARAMS * TOKENS
    f_star = 30 * (compute / np.exp(np.log(compute).mean())) ** -0.5 + 8
    groups = []
    for params, optimum in zip(PARAMS, f_star):
        b = 0.8
        a = 0.9 / (optimum**b * np.exp(-b))
        groups.append(
            Group(f"m{params:.0e}", "m", params, TOKENS, (), simulate_curve(a, b, b / optimum, FREQS, facts, rng))
        )
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    groups = sweep(np.random.default_rng(0))
    times = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        analysis = analyse(groups, args.bootstrap, seed=repeat, targets=[(7e7, TOKENS)])
        times.append(time.perf_counter() - start)
    law = analysis.laws[0].law
    print(
        f"fit_law full fit, {len(PARAMS)} models x {FREQS.size} frequencies, {args.bootstrap} resamples: "
        f"best {min(times):.2f} s, median {np.median(times):.2f} s over {args.repeats} runs "
        f"(alpha = {law.alpha:.3f}, true 0.5)"
    )


if __name__ == "__main__":
    main()
