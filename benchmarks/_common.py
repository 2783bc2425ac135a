"""Shared by the benchmark scripts: compose the project's config as train.py would."""

from __future__ import annotations

import sys

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
