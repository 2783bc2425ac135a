"""The per-run results file: the source of truth that fit_law.py reads (W&B only mirrors it).

Schema `kinject.results/1` (documented in docs/results-schema.md): status, run, model, budget, infusion,
metrics, curve, items (per-item outcomes per suite) and the full resolved config. A record is
started, completed or failed, and read here alone; `complete_runs` is the one definition of which
runs count, shared by train.py (skip what is done), this module's CSV and fit_law.py.
`kinject-results FOLDER... > runs.csv` flattens the complete runs below folders into a table;
`--metrics-from in_sequence.json` takes each run's metrics from that file beside its record instead (what
`evaluate.py ... out=RUN/in_sequence.json` wrote when it re-scored the run on other suites);
`--items memorization/correct_token recall/exact` writes those per-item outcomes instead, one row per fact.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kinject.files import write_json_atomic

SCHEMA = "kinject.results/1"
FILENAME = "results.json"


@dataclass
class RunRecord:
    path: Path
    data: dict[str, Any]

    @classmethod
    def start(cls, output_dir: str | os.PathLike, **sections: Any) -> RunRecord:
        """A running record (in memory until written) with its run, model, budget, ... sections."""
        return cls(Path(output_dir) / FILENAME, {"schema": SCHEMA, "status": "running", **sections})

    def write(self) -> Path:
        return write_json_atomic(self.path, self.data)

    def progress(self, **progress: Any) -> Path:
        """Rewrites the running record with how far training has got: `progress` {step, steps, eta_s, tokens_per_s}."""
        self.data["progress"] = progress
        return self.write()

    def complete(self, **sections: Any) -> Path:
        """Writes the record as complete with its metrics, curve, items, ... (a finished run has no `progress`)."""
        self.data.pop("progress", None)
        self.data.update(status="complete", **sections)
        return self.write()

    def fail(self, error: BaseException) -> Path:
        """Writes the record as failed, with the error and the line that raised it."""
        frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        self.data.update(
            status="failed",
            error=f"{type(error).__name__}: {error}",
            where=f"{frame.filename}:{frame.lineno}" if frame else "",
        )
        return self.write()

    def interrupt(self, step: int, reason: str) -> Path:
        """Writes the record as interrupted at `step`; the same command resumes from the last checkpoint."""
        self.data.update(status="interrupted", step=step, error=reason)
        return self.write()

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunRecord:
        with open(path) as handle:
            data = json.load(handle)
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema != SCHEMA:
            raise ValueError(f"{path}: expected a {SCHEMA} results file, got schema {schema!r}")
        return cls(Path(path), data)

    @property
    def status(self) -> str:
        return self.data["status"]

    def __getitem__(self, section: str) -> Any:
        return self.data[section]


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The contents of a results file, its schema checked."""
    return RunRecord.read(path).data


def _usable(path: Path) -> RunRecord | str:
    """The record if the run is complete, else why it does not count."""
    try:
        record = RunRecord.read(path)
    except (OSError, ValueError) as error:
        return f"{path}: unreadable ({error})"
    return record if record.status == "complete" else f"{path}: status {record.status!r}, not complete"


def complete_at(output_dir: str | os.PathLike) -> RunRecord | None:
    """The run folder's record when that run is complete."""
    path = Path(output_dir) / FILENAME
    found = _usable(path) if path.exists() else None
    return found if isinstance(found, RunRecord) else None


def scan(folders: Iterable[str | os.PathLike]) -> Iterator[RunRecord | str]:
    """Every results file below the folders, in path order: its record when complete, else why it is skipped."""
    for folder in folders:
        for path in sorted(Path(folder).rglob(FILENAME)):
            yield _usable(path)


def complete_runs(folders: Iterable[str | os.PathLike]) -> Iterator[RunRecord]:
    return (found for found in scan(folders) if isinstance(found, RunRecord))


COLUMNS = (
    "model",
    "params_total",
    "params_non_embedding",
    "tokens",
    "freq",
    "format",
    "paraphrase",
    "seed",
    "num_facts",
    "injected_share",
    "budget_mode",
    "packing",
    "window",
    "lr",
)


def _records(folders: list[str | os.PathLike], metrics_from: str | None) -> list[RunRecord]:
    """The complete runs below the folders; with `metrics_from`, only those with that file in their folder, its
    metrics and items in place of the record's."""
    records = list(complete_runs(folders))
    if not metrics_from:
        return records
    rescored = []
    for record in records:
        path = record.path.parent / metrics_from
        if path.is_file():
            other = json.loads(path.read_text())
            rescored.append(
                RunRecord(record.path, {**record.data, "metrics": other["metrics"], "items": other.get("items", {})})
            )
    return rescored


def table(folders: list[str | os.PathLike], metrics_from: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """One row per complete run below the folders: its identity, then every metric (a CSV for people). With
    `metrics_from`, the metrics of that file in the run's folder, for the runs that have one."""
    records = _records(folders, metrics_from)
    metrics = sorted({key for r in records for key in r["metrics"]})
    rows = [
        [
            r["model"]["name"],
            r["model"]["params_total"],
            r["model"]["params_non_embedding"],
            r["budget"]["tokens"],
            r["infusion"]["freq"],
            r["infusion"]["format"],
            r["infusion"]["paraphrase"],
            r["run"]["seed"],
            r["infusion"]["num_facts"],
            round(r["infusion"]["injected_share"], 5),
            r["budget"].get("mode", "fixed_total"),
            r["infusion"].get("packing", "scattered"),
            "-".join(map(str, r["infusion"].get("window", (0.0, 1.0)))),
            r["config"]["optim"]["lr"],
            *(r["metrics"].get(key, "") for key in metrics),
        ]
        for r in records
    ]
    return [*COLUMNS, *metrics], sorted(rows, key=lambda row: (row[1], row[3], row[4], row[7]))


ITEM_COLUMNS = ("model", "freq", "seed", "suite", "fact_id", "outcome")


def items(
    folders: list[str | os.PathLike], fields: list[str], metrics_from: str | None = None
) -> tuple[list[str], list[list[Any]]]:
    """One row per fact, run and `SUITE/FIELD` (e.g. `recall/exact`): the per-item outcomes that the
    intervals and tests resample, as a CSV to commit beside the runs' table."""
    rows = []
    for r in _records(folders, metrics_from):
        for field in fields:
            suite, _, name = field.partition("/")
            held = r["items"].get(suite)
            if held is None or name not in held:
                raise ValueError(f"{r.path}: no per-item {name!r} of suite {suite!r}; --items takes SUITE/FIELD")
            identity = [r["model"]["name"], r["infusion"]["freq"], r["run"]["seed"], suite]
            rows += [[*identity, fact, value] for fact, value in zip(held["fact_id"], held[name], strict=True)]
    return list(ITEM_COLUMNS), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kinject-results", description="complete runs as CSV on stdout")
    parser.add_argument("folders", nargs="+", help="searched recursively for results.json")
    parser.add_argument("--metrics-from", metavar="FILE", help="each run's metrics from this file in its folder")
    parser.add_argument(
        "--items", nargs="+", metavar="SUITE/FIELD", help="per-item outcomes (e.g. recall/exact), a row per fact"
    )
    args = parser.parse_args(argv)
    if missing := [folder for folder in args.folders if not Path(folder).is_dir()]:
        parser.error(f"expected folders of runs, got {', '.join(missing)}: no such folder")
    try:
        header, rows = (
            items(args.folders, args.items, args.metrics_from) if args.items else table(args.folders, args.metrics_from)
        )
    except ValueError as error:
        print(f"kinject-results: {error}", file=sys.stderr)
        return 2
    if not rows:
        print(f"kinject-results: no complete run under {', '.join(args.folders)}", file=sys.stderr)
    writer = csv.writer(sys.stdout)
    writer.writerow(header)
    writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
