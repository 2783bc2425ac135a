"""A run folder belongs to one config: a run skips or resumes only what the same settings trained.

Checked before anything is built or written. The folder's config comes from its results file (any
status) or, without one, from its last checkpoint; a folder holding a run of other settings, a results
file or checkpoint that cannot be read, or a complete run that a rerun would only overwrite is refused
with what to do instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from kinject import results
from kinject.errors import ConfigError
from kinject.fingerprint import differences
from kinject.training.checkpoint import DamagedCheckpoint, contents, readable

log = logging.getLogger("kinject")

LAST = Path("checkpoints") / "last.ckpt"
SHOWN = 8
NEW_FOLDER = "use a new folder (hydra.run.dir=... or paths.output_dir=...)"
WAYS_OUT = f"{NEW_FOLDER}, or add overwrite=true to delete its results and checkpoints and start clean"


def _unreadable(path: Path, why: str) -> ConfigError:
    return ConfigError("paths.output_dir", f"a folder whose run can be read; {path} cannot: {why}", hint=WAYS_OUT)


def previous_record(output_dir: Path) -> results.RunRecord | None:
    """The folder's results file, if it has one; refused if it cannot be read or holds no config."""
    path = output_dir / results.FILENAME
    if not path.exists():
        return None
    try:
        record = results.RunRecord.read(path)
    except json.JSONDecodeError as error:
        raise _unreadable(path, f"it is not valid JSON (cut off or edited): {error}") from error
    except (OSError, ValueError) as error:  # another schema: written by another kinject version, or not by train.py
        raise _unreadable(path, str(error).removeprefix(f"{path}: ")) from error
    if not isinstance(record.data.get("config"), dict):
        raise _unreadable(path, "it holds no 'config' (not a results file written by train.py)")
    return record


def last_checkpoint(output_dir: Path) -> dict[str, Any] | None:
    """The contents (no tensors) of the folder's last checkpoint, if it has one; refused if it is damaged."""
    last = readable(output_dir / LAST)
    if last is None:
        return None
    try:
        return contents(last)
    except DamagedCheckpoint as error:
        raise _unreadable(last, str(error)) from error


def previous_config(output_dir: Path) -> dict[str, Any] | None:
    """The resolved config the folder's run was started with, if it holds one."""
    record = previous_record(output_dir)
    if record is not None:
        return record["config"]
    last = last_checkpoint(output_dir)
    return None if last is None else last.get("kinject_config")


def claim(output_dir: str | Path, config: dict[str, Any], overwrite: bool, resume: bool = True) -> None:
    """Refuses a folder that holds a run of other settings, or (`resume`) a checkpoint that cannot be read; with
    `overwrite`, deletes its results, checkpoints and log first, so the run starts clean."""
    output_dir = Path(output_dir)
    if overwrite:
        _clear(output_dir)
        return
    old = previous_config(output_dir)
    if resume:
        last_checkpoint(output_dir)  # also when the results file said what the folder holds: fit would read it
    if old is None:
        return
    changed = differences(old, config)
    if changed:
        shown = ", ".join(f"{key}: {a!r} -> {b!r}" for key, (a, b) in list(changed.items())[:SHOWN])
        more = f" and {len(changed) - SHOWN} more" if len(changed) > SHOWN else ""
        raise ConfigError(
            "paths.output_dir",
            f"a folder of no run or of a run with these settings; {output_dir} holds a run "
            f"that differs in {shown}{more}",
            hint=WAYS_OUT,
        )


def refuse_empty_rerun(output_dir: str | Path, done: results.RunRecord) -> None:
    """`skip_complete=false` on a complete run whose checkpoint is at its last step would train nothing and only
    replace its record (no training loss, the wall time of the empty rerun): refused with what to do instead."""
    output_dir = Path(output_dir)
    last = last_checkpoint(output_dir)
    steps = done["budget"]["steps"]
    if last is None or int(last["global_step"]) < steps:
        return
    raise ConfigError(
        "skip_complete",
        f"true for {output_dir}, which holds a complete run of these settings: its checkpoint is at its last "
        f"step ({steps}), so running it again would train nothing and only overwrite its record",
        hint="to keep it, leave skip_complete=true (its metrics are returned); to train it again, add "
        f"overwrite=true; to score it again, python evaluate.py ckpt={output_dir / LAST}",
    )


def _clear(output_dir: Path) -> None:
    """Deletes what a previous run left: its results, checkpoints and the lines of its log (this process's log
    handlers write to the emptied file)."""
    held = (output_dir / results.FILENAME).exists() or (output_dir / LAST.parent).exists()
    (output_dir / results.FILENAME).unlink(missing_ok=True)
    shutil.rmtree(output_dir / LAST.parent, ignore_errors=True)
    for handler in logging.getLogger().handlers:
        file = Path(getattr(handler, "baseFilename", ""))
        if isinstance(handler, logging.FileHandler) and file.parent == output_dir.resolve() and file.is_file():
            handler.flush()
            os.truncate(file, 0)
    if held:
        log.info("overwrite=true: deleted the results, checkpoints and log of the run %s held", output_dir)
