"""How often fit_law's verdict calls an interior optimum: on true plateaus (false positives) and on true
falls after a peak (power), for sweep designs like the CPU ladder's.

Each cell is `--sweeps` simulated sweeps of F in {2, 8, 32, 128, 512} with per-item outcomes (the same
facts at every F and seed) and seed-to-seed noise of `--seed-sd` on P at each F; the verdict is
kinject.law.curves.fit_curve's (bootstrap shape test and AICc), with `--bootstrap` resamples.

    python benchmarks/peak_power.py [--sweeps 200] [--bootstrap 200] [--seed-sd 0.05]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kinject.law.curves import falling_curve, fit_curve, simulate_runs

FREQS = np.array([2.0, 8, 32, 128, 512])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweeps", type=int, default=200)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--seed-sd", type=float, default=0.05)
    args = parser.parse_args()
    truths = {
        "plateau at 0.8": 0.25 + 0.55 * -np.expm1(-FREQS / 8),
        "fall of 0.10": falling_curve(FREQS, 0.8, 128, 0.10),
        "fall of 0.15": falling_curve(FREQS, 0.8, 128, 0.15),
    }
    print(
        f"interior optimum called, share of {args.sweeps} sweeps (seed SD {args.seed_sd}, {args.bootstrap} resamples)"
    )
    print("| facts | seeds | " + " | ".join(truths) + " |")
    print("|---|---|" + "---|" * len(truths))
    started = time.perf_counter()
    for facts in (120, 300):
        for seeds in (2, 3):
            cells = []
            for truth in truths.values():
                rng = np.random.default_rng(0)
                calls = [
                    fit_curve(
                        simulate_runs(FREQS, truth, facts, rng, seeds, args.seed_sd),
                        args.bootstrap,
                        rng,
                        interval=False,
                    ).status
                    == "ok"
                    for _ in range(args.sweeps)
                ]
                cells.append(f"{np.mean(calls):.2f}")
            print(f"| {facts} | {seeds} | " + " | ".join(cells) + " |", flush=True)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
