"""Every preset in conf/experiment/ and every size in conf/model/ composes and passes validation, job by job:
a preset a user launches is never refused for a value the project itself wrote."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kinject import CONF_DIR, plan
from kinject.budget import Budget
from kinject.training.model import ModelSpec
from kinject.validation import validate

PRESETS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
# `model=init` takes every size from the checkpoint it names (tests/test_init.py)
SIZES = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml") if path.stem != "init")
# the settings with no default that a preset leaves to the user
USER_SET = {"paper": ["knowledge.files=triples.jsonl"]}


def _compose(overrides: list[str]):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_the_presets_and_sizes_are_the_ones_this_test_knows():
    assert {"smoke", "cpu_ladder", "cpu_budget", "cpu_screen", "paper", "search_freq"} <= set(PRESETS)
    assert {"xxs", "xs", "tiny", "small", "137m", "300m", "562m", "1.05b", "3b"} <= set(SIZES)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_job_of_a_preset_composes_and_validates(preset):
    base = [f"experiment={preset}", *USER_SET.get(preset, [])]
    sweeper = _compose(base).hydra.sweeper
    if str(sweeper._target_).endswith("BasicSweeper"):
        grid = plan.jobs(base)
    else:  # a search: its space is the sweeper's to sample; the fixed part must validate
        assert sweeper.params, f"{preset}: a search preset without a search space"
        grid = [base]
    assert grid, f"{preset}: no job"
    for overrides in _each_value_once(grid):
        cfg = plan.compose_job(overrides)
        validate(cfg)
        budget = Budget.from_config(cfg)
        assert budget.steps >= 1 and budget.tokens_trained >= int(cfg.tokens) * 0.99, overrides


def _each_value_once(grid: list[list[str]]) -> list[list[str]]:
    """Jobs of the grid until every swept value has been in one (a value is checked alone, whatever it meets)."""
    seen: set[str] = set()
    chosen = []
    for overrides in grid:
        if not set(overrides) <= seen:
            chosen.append(overrides)
            seen.update(overrides)
    return chosen


@pytest.mark.parametrize("size", SIZES)
def test_every_model_size_composes_and_validates(size):
    cfg = plan.compose_job([f"model={size}"])
    if cfg.model.init is None:  # a public init is read from the hub; tests/test_plan.py prices those offline
        validate(cfg)
    spec = ModelSpec.from_config(OmegaConf.to_container(cfg.model, resolve=True))
    assert spec.name == size and spec.hidden_size % spec.num_heads == 0
