"""Files: atomic writes (a crash mid-write leaves the previous file whole) and globs that must match."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kinject.errors import ConfigError


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which then replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as handle:
            json.dump(payload, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())

    return write_atomic(path, write)


def expand(patterns: str | Sequence[str], key: str) -> list[str]:
    """The files that paths or globs name, each pattern required to match something."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns or ())
    if not patterns:
        raise ConfigError(key, "a path or glob, or a list of them", patterns)
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(p for p in glob.glob(os.path.expanduser(str(pattern)), recursive=True) if os.path.isfile(p))
        if not matched:
            hint = "no file matches it"
            if os.path.isdir(os.path.expanduser(str(pattern))):
                folder = str(pattern).rstrip("/")
                hint = f"it is a folder: name its files with a glob, e.g. '{folder}/*.parquet' or '{folder}/**/*.jsonl'"
            raise ConfigError(key, "paths or globs that match files", str(pattern), hint=hint)
        files.extend(p for p in matched if p not in files)
    return files
