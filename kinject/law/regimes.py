"""The regime table of a screen: one row per setting (the knobs that vary across the runs read, and D),
and per metric whether each size has an interior optimum, with the shape test's p-values for the rise
and the fall. A setting shows collapse on a metric when the paired bootstrap finds a rise and a fall
for every size; it is confirmed when fit_law's model comparison prefers the rise-and-fall form too.

    kinject-regimes multirun/cpu_screen [--metric memorization/acc_token ...] [--out table.json]
        [--model xs --model tiny] [--tokens 1e6]      (only these sizes and this budget: the screen's runs)

The verdicts are fit_law's (law.curves.fit_curve: the paired bootstrap and the model comparison), so a
row says no more than fit_law would per size; the F* intervals are left to fit_law.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from kinject.law.curves import fit_curve
from kinject.law.peak import ALPHA
from kinject.law.runs import TableError, load_runs, to_groups

METRICS = (
    "memorization/acc_token",
    "memorization/margin",
    "extraction/acc_token",
    "extraction/margin",
    "background/acc_token",
    "background/margin",
)


@dataclass(frozen=True)
class Verdict:
    model: str
    interior: bool
    status: str
    p_rise: float | None
    p_fall: float | None
    peak: float | None  # F of the highest mean, when F > 0 runs exist
    runs: int
    preferred: str | None = None  # by AICc: "rise-and-fall" | "saturating"

    @property
    def shape(self) -> bool:
        """The paired bootstrap alone finds a rise and a fall."""
        return self.p_rise is not None and self.p_fall is not None and max(self.p_rise, self.p_fall) < ALPHA

    def word(self) -> str:
        """yes; or no, saying why where the shape test alone would have said yes."""
        if self.interior or not self.shape:
            return "yes" if self.interior else "no"
        return "no, AICc prefers saturating" if self.preferred == "saturating" else "no, the fitted form has no optimum"


@dataclass(frozen=True)
class Row:
    setting: str
    metric: str
    verdicts: tuple[Verdict, ...]

    @property
    def collapse(self) -> bool:
        """Issue #17's rule: the paired bootstrap finds an interior optimum for every size (two or more)."""
        return len(self.verdicts) > 1 and all(v.shape for v in self.verdicts)

    @property
    def confirmed(self) -> bool:
        """The collapse holds by fit_law's full verdict too: the rise-and-fall form preferred for every size."""
        return self.collapse and all(v.interior for v in self.verdicts)


def _plain(value: str) -> str:
    """A condition value as typed on the command line (conditions hold settings as JSON)."""
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value
    return decoded if isinstance(decoded, str) else value


def _setting(tokens: float, condition: tuple[tuple[str, str], ...], budgets: int) -> str:
    parts = [f"{key}={_plain(value)}" for key, value in condition]
    return " ".join(([f"D={tokens:.3g}"] if budgets > 1 else []) + parts) or "(one setting)"


def screen(
    dirs: Sequence[Path],
    metrics: Sequence[str],
    n_boot: int,
    seed: int,
    models: Sequence[str] = (),
    tokens: float | None = None,
    metrics_from: str | None = None,
) -> list[Row]:
    """Every (setting, metric) row, in the order of `metrics`, of the runs of `models` whose D is within 1% of
    `tokens` (tokens=1_000_000 trains 999,424: whole steps); default: all runs. `metrics_from`: as fit_law's."""
    rows = []
    for metric in metrics:
        table = load_runs(dirs, metric, metrics_from)
        table.runs = [
            r
            for r in table.runs
            if (not models or r.model in models) and (tokens is None or abs(r.tokens - tokens) <= 0.01 * tokens)
        ]
        if not table.runs:
            raise TableError(
                f"no runs of {', '.join(models) or 'any model'} at D = {tokens or 'any'} in {', '.join(map(str, dirs))}"
            )
        groups = to_groups(table)
        budgets = len({g.tokens for g in groups})
        by_setting: dict[str, list[Verdict]] = {}
        for group in groups:
            fit = fit_curve(group.curve, n_boot, group.curve.rng(seed), interval=False)
            test = fit.test
            by_setting.setdefault(_setting(group.tokens, group.condition, budgets), []).append(
                Verdict(
                    group.model,
                    fit.status == "ok",
                    fit.status,
                    test.p_rise if test else None,
                    test.p_fall if test else None,
                    test.peak_freq if test else None,
                    len(group.curve.freq),
                    fit.preferred,
                )
            )
        rows += [Row(setting, metric, tuple(v)) for setting, v in by_setting.items()]
    return rows


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(rows: Sequence[Row]) -> str:
    lines = [
        "| setting | metric | per size: interior optimum (p rise / p fall, F of the top mean) | collapse "
        "(shape test, every size) | and by AICc |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = "; ".join(
            f"{v.model} {v.word()} ({_p(v.p_rise)} / {_p(v.p_fall)}, top at F = {v.peak:g})"
            if v.peak is not None
            else f"{v.model} {v.status}"
            for v in row.verdicts
        )
        lines.append(
            f"| {row.setting} | `{row.metric}` | {cells} | {'**yes**' if row.collapse else 'no'} | "
            f"{'**yes**' if row.confirmed else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="folders searched recursively for results.json")
    parser.add_argument("--metric", action="append", help=f"repeatable; default: {', '.join(METRICS)}")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples of the shape test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", action="append", default=[], help="only this size (repeatable)")
    parser.add_argument("--tokens", type=float, help="only runs of this budget D (within 1%%)")
    parser.add_argument("--out", type=Path, help="the rows as JSON")
    parser.add_argument("--metrics-from", metavar="FILE", help="each run's metrics from this file beside its record")
    args = parser.parse_args(argv)
    try:
        rows = screen(
            args.runs, args.metric or METRICS, args.bootstrap, args.seed, args.model, args.tokens, args.metrics_from
        )
    except TableError as error:
        print(f"regimes: {error}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.out:
        args.out.write_text(
            json.dumps([{**asdict(r), "collapse": r.collapse, "confirmed": r.confirmed} for r in rows], indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
