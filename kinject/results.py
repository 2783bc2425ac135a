"""The per-run results file: the source of truth that fit_law.py reads (W&B only mirrors it).

Schema `kinject.results/1` (documented in the README): status, run, model, budget, infusion,
metrics, curve, items (per-item outcomes per suite) and the full resolved config.
"""

from __future__ import annotations

import json
import os
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
