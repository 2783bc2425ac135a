"""A run folder belongs to one config: a run skips or resumes only what the same settings trained.

Checked before anything is built or written. The folder's config comes from its results file (any
status) or, without one, from its last checkpoint; a folder holding a run of other settings is
refused with the settings that differ and the two ways out.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME

from kinject import results
from kinject.errors import ConfigError
from kinject.fingerprint import differences
from kinject.training.checkpoint import readable

LAST = Path("checkpoints") / "last.ckpt"
SHOWN = 8


def previous_config(output_dir: Path) -> dict[str, Any] | None:
    """The resolved config the folder's run was started with, if it holds one."""
    record = output_dir / results.FILENAME
    if record.exists():
        return results.RunRecord.read(record)["config"]
    last = readable(output_dir / LAST)
    if last is None:
        return None
    if last.is_file():
        return torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("kinject_config")
    if (last / _METADATA_FILENAME).is_file():  # a sharded (FSDP) checkpoint keeps the config beside its shards
        return torch.load(last / _METADATA_FILENAME, map_location="cpu", weights_only=True).get("kinject_config")
    return None


def claim(output_dir: str | Path, config: dict[str, Any], overwrite: bool) -> None:
    """Refuses a folder that holds a run of other settings; with `overwrite`, deletes its results and
    checkpoints first, so the run starts clean."""
    output_dir = Path(output_dir)
    if overwrite:
        (output_dir / results.FILENAME).unlink(missing_ok=True)
        shutil.rmtree(output_dir / LAST.parent, ignore_errors=True)
        return
    old = previous_config(output_dir)
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
            hint="use a new folder (hydra.run.dir=... or paths.output_dir=...), or "
            "add overwrite=true to delete its results and checkpoints and start clean",
        )
