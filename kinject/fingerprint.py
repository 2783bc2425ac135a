"""What decides a trained model and its evaluation: the config less paths, loggers and how the work is
spread. A run folder belongs to one fingerprint: results, checkpoints and fit_law's groups are keyed by it.

Left out (they change where and how fast a run goes, not what it learns or how it is scored): paths,
loggers, sweep and run names, the returned metric, resume and skip flags, threads, extra callbacks,
compile and activation checkpointing, devices, nodes, strategy and accelerator (the data of every step is
the same on any number of devices), micro-batch size and loader workers (the global batch is kept), progress
bar, logging and checkpoint intervals, the evaluation's batching and learning-curve points, and lookup
tables whose entry a run uses is a setting of its own (`tokens_per_model` of experiment=paper decides
`tokens`, `fit_per_model` the micro-batch, strategy and activation checkpointing).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

IGNORED = (
    "paths",
    "logger",
    "sweep",
    "run_name",
    "metric",
    "resume",
    "skip_complete",
    "overwrite",
    "threads",
    "callbacks",
    "compile",
    "activation_checkpointing",
    "hydra",
    "tokens_per_model",
    "fit_per_model",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.accelerator",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.checkpoint",
    "data.micro_batch_size",
    "data.num_workers",
    "eval.every_n_steps",
    "eval.at_start",
    "eval.batch_items",
    "eval.heldout_batch",
)


def settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The deciding settings of a resolved config, as dotted keys."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if prefix in IGNORED:
            return
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif prefix:
            flat[prefix] = node

    walk(config, "")
    return flat


def fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings(config), sort_keys=True, default=str).encode()).hexdigest()[:16]


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Deciding settings whose values differ: key -> (old, new). A setting only one side has was added or
    removed by a code update (the older run had no such knob) and is not compared, or every folder written
    before a new setting existed would be refused."""
    a, b = settings(old), settings(new)
    return {key: (a[key], b[key]) for key in sorted(a.keys() & b.keys()) if a[key] != b[key]}
