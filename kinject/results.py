"""The per-run results file: the source of truth that fit_law.py reads (W&B only mirrors it).

Schema `kinject.results/1` (documented in the README): status, run, model, budget, infusion,
metrics, curve, items (per-item outcomes per suite) and the full resolved config.
`python -m kinject.results FOLDER... > runs.csv` flattens the complete runs below folders into a table.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

SCHEMA = "kinject.results/1"
FILENAME = "results.json"


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write to a temporary file and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as handle:
            json.dump(payload, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as handle:
        payload = json.load(handle)
    if payload.get("schema") != SCHEMA:
        raise ValueError(f"{path}: expected a {SCHEMA} results file, got schema {payload.get('schema')!r}")
    return payload


COLUMNS = ("model", "params_total", "params_non_embedding", "tokens", "freq", "format", "paraphrase", "seed",
           "num_facts", "injected_share")


def table(folders: list[str | os.PathLike]) -> tuple[list[str], list[list[Any]]]:
    """One row per complete run below the folders: its identity, then every metric (a CSV for people)."""
    records = [read(p) for folder in folders for p in sorted(Path(folder).rglob(FILENAME))]
    records = [r for r in records if r["status"] == "complete"]
    metrics = sorted({key for r in records for key in r["metrics"]})
    rows = [[r["model"]["name"], r["model"]["params_total"], r["model"]["params_non_embedding"], r["budget"]["tokens"],
             r["infusion"]["freq"], r["infusion"]["format"], r["infusion"]["paraphrase"], r["run"]["seed"],
             r["infusion"]["num_facts"], round(r["infusion"]["injected_share"], 5),
             *(r["metrics"].get(key, "") for key in metrics)] for r in records]
    return [*COLUMNS, *metrics], sorted(rows, key=lambda row: (row[1], row[3], row[4], row[7]))


def main(argv: list[str]) -> int:
    """python -m kinject.results FOLDER... > runs.csv"""
    if not argv:
        print(main.__doc__, file=sys.stderr)
        return 2
    header, rows = table(argv)
    writer = csv.writer(sys.stdout)
    writer.writerow(header)
    writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
