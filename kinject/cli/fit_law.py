"""Fit the knowledge-infusion scaling law to a sweep: each model's optimal frequency F* with its
interval, then F*(C) = A / C^alpha + E across sizes (C = 6 N D), validated and extrapolated.

    python fit_law.py multirun/ladder --out report.json --plots figures --predict 7e9:2e12
    python fit_law.py --wandb me/kinject --group ladder --wandb-log
    python fit_law.py --csv published.csv

Usage and the report's schema: docs/fit_law.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kinject.law.analysis import analyse
from kinject.law.curves import FitError
from kinject.law.report import log_wandb, plot_fits, plot_law, render, to_json
from kinject.law.runs import (
    DEFAULT_METRIC,
    PARAMS,
    Table,
    TableError,
    load_csv,
    load_runs,
    load_wandb,
    merge,
    params_definition,
    to_groups,
)


def target(text: str) -> tuple[float, float]:
    """'7e9:2e12' -> (N, D)."""
    try:
        params, tokens = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N:D such as 7e9:2e12, got {text!r}") from None
    if params <= 0 or tokens <= 0:
        raise argparse.ArgumentTypeError(f"N and D must be positive, got {text!r}")
    return params, tokens


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="folders searched recursively for results.json")
    parser.add_argument(
        "--csv",
        type=Path,
        action="append",
        default=[],
        help="CSV with columns model,params,tokens,freq,acc[,seed,n_items] (repeatable)",
    )
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the finished runs of a W&B project")
    parser.add_argument("--group", help="W&B runs of this group only")
    parser.add_argument("--tag", help="W&B runs with this tag only")
    parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help="what to fit: an accuracy SUITE/acc_SCORE, a recall SUITE/exact or SUITE/first_token (no chance "
        "floor), or an unbounded SUITE/margin or SUITE/gold_logprob",
    )
    parser.add_argument(
        "--metrics-from",
        metavar="FILE",
        help="each run's metrics and per-item outcomes from this file beside its results.json (evaluate.py's out=)",
    )
    parser.add_argument("--params", choices=list(PARAMS), default="non_embedding", help="what N counts")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples (0: no intervals)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shape-only",
        action="store_true",
        help="an interior optimum needs the shape test alone, not also AICc's preference over "
        "a monotone saturating curve",
    )
    parser.add_argument(
        "--predict",
        type=target,
        action="append",
        default=[],
        metavar="N:D",
        help="F* with a prediction interval at this size and budget (repeatable)",
    )
    parser.add_argument("--out", type=Path, help="JSON report")
    parser.add_argument("--plots", type=Path, metavar="DIR", help="write pf_fits.png and law.png here")
    parser.add_argument("--wandb-log", action="store_true", help="log report and plots to a new run in --wandb")
    args = parser.parse_args(argv)
    if not (args.runs or args.csv or args.wandb):
        parser.error("nothing to read: give run folders, --csv FILE or --wandb ENTITY/PROJECT")
    if args.wandb_log and not args.wandb:
        parser.error("--wandb-log logs into the --wandb project: give --wandb ENTITY/PROJECT")
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    if args.out and args.out.is_dir():
        parser.error(f"--out: expected a file path for the JSON report, got the folder {args.out}")
    if args.out and (file := _file_on(args.out.parent)):
        parser.error(f"--out: expected a file path in a folder, but {file} is a file")
    if args.plots and (file := _file_on(args.plots)):
        parser.error(f"--plots: expected a folder for pf_fits.png and law.png, got the file {file}")
    return args


def _file_on(path: Path) -> Path | None:
    """The file that stands where a folder on `path` would have to be (the path itself or a parent)."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def load(args: argparse.Namespace) -> Table:
    tables = [load_runs(args.runs, args.metric, args.metrics_from)] if args.runs else []
    tables += [load_csv(path) for path in args.csv]
    if args.wandb:
        tables.append(load_wandb(args.wandb, args.metric, args.group, args.tag))
    return merge(tables)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        table = load(args)
        analysis = analyse(
            to_groups(table, args.params), args.bootstrap, args.seed, args.predict, aicc_gate=not args.shape_only
        )
    except (TableError, FitError) as error:
        print(f"fit_law: {error}", file=sys.stderr)
        return 2
    sources = [str(p) for p in [*args.runs, *args.csv]] + ([f"wandb:{args.wandb}"] if args.wandb else [])
    report = to_json(
        analysis,
        {
            "metric": args.metric,
            "params": args.params,
            "params_definition": params_definition(table, args.params),
            "sources": sources,
            "seed": args.seed,
            "notes": table.notes,
        },
    )
    print(render(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, allow_nan=False))
    images = (
        [plot_fits(analysis, args.plots / "pf_fits.png"), plot_law(analysis, args.plots / "law.png")]
        if args.plots
        else []
    )
    if args.wandb_log:
        import wandb

        log_wandb(report, images, args.wandb, wandb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
