"""Shared by the benchmark scripts: compose the project's config as train.py would."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from kinject import CONF_DIR


def config(*overrides: str) -> DictConfig:
    """The real config with `overrides`, then any key=value given on the command line."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "logger=none",
                "run_name=bench",
                "paths.output_dir=/tmp/kinject-bench",
                *overrides,
                *sys.argv[1:],
            ],
        )


def best_of(runs: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Seconds per call of each run, the best of `repeats`, taking turns after one warm-up call each."""
    best = dict.fromkeys(runs, float("inf"))
    for run in runs.values():
        run()
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
