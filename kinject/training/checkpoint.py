"""Checkpoints that a kill never tears: a single file is written to a temporary file and renamed over the old
one; a sharded folder is written beside the old one and swapped in (`swap_in`) once every rank has written."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.plugins.io import TorchCheckpointIO

from kinject.files import write_atomic

log = logging.getLogger("kinject")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def staging(path: Path, step: int) -> Path:
    """The folder the sharded checkpoint of `step` is written to before it becomes `path`."""
    return path.with_name(f"{path.name}.tmp-{step}")


def moved_aside(path: Path) -> Path:
    """Where `swap_in` keeps the previous checkpoint while the new one is renamed in."""
    return path.with_name(f"{path.name}.old")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def clear_staging(path: Path) -> None:
    """Removes the folders of saves that were killed before their swap (never read: they may be partial)."""
    for leftover in path.parent.glob(f"{glob.escape(path.name)}.tmp-*"):
        _remove(leftover)


def swap_in(new: Path, path: Path) -> None:
    """Makes the complete folder `new` the checkpoint at `path` in two renames: the old one aside, the new one in;
    then deletes the old one. A kill at any point leaves `readable(path)` a complete checkpoint, old or new."""
    old = moved_aside(path)
    if path.exists():
        _remove(old)  # left by a kill after a previous swap's second rename: `path` is the complete one
        os.replace(path, old)
    os.replace(new, path)
    _remove(old)


def readable(path: str | os.PathLike) -> Path | None:
    """The checkpoint to read for `path`: itself, or the previous one moved aside where a kill fell between the
    two renames of `swap_in`; None if there is neither. Staging folders are never read."""
    path = Path(path)
    if path.exists():
        return path
    old = moved_aside(path)
    if old.exists():
        log.warning("%s is missing (a save was cut off while swapping it in): reading the previous one, %s", path, old)
        return old
    return None


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read: cut off, overwritten with other bytes, or a sharded folder without meta.pt."""


def contents(path: Path) -> dict[str, Any]:
    """A checkpoint's step, config and states without reading its tensors (memory-mapped; a sharded folder's
    meta.pt), so that a damaged one is found before a run is built, not when `fit` restores it."""
    file = path / _METADATA_FILENAME if path.is_dir() else path
    if not file.is_file():
        raise DamagedCheckpoint(f"{file.name} is missing (a sharded checkpoint keeps its step and config there)")
    if file is path and not zipfile.is_zipfile(path):
        raise DamagedCheckpoint("it is not a checkpoint written by torch.save (cut off, or other bytes)")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True, mmap=file is path)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, OSError, ... for bad bytes
        first = (str(error).splitlines() or [""])[0][:200]
        raise DamagedCheckpoint(f"{type(error).__name__}: {first}") from error
    if not isinstance(loaded, dict) or "global_step" not in loaded:
        raise DamagedCheckpoint("it holds no global_step (not a checkpoint written by train.py)")
    return loaded
