"""`hydra/sweeper=optuna`: the settings of kinject's Optuna search, registered with Hydra's ConfigStore."""

# No `from __future__ import annotations`: Hydra's plugin scanner runs this module before it is in
# sys.modules, where a dataclass cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.kinject_optuna.sweeper.OptunaSweeper"
    # The sampler is built by the sweeper, which offsets its seed by the trials already stored.
    _recursive_: bool = False
    n_trials: int = 12  # total for the study: a re-run adds only the trials still missing
    n_jobs: int = 1  # trials per launcher batch
    direction: Any = "maximize"  # or a list, one per value of `metric`, for a Pareto search
    study_name: str = "${sweep}"
    storage: str = "sqlite:///multirun/optuna/${.study_name}.db"
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    law_report: str | None = None  # fit_law.py JSON report: the first trials go around its F*
    law_group: str | None = None  # model group of the report; null: the report's only prediction
    warm_start_trials: int = 3  # F*, the ends of its interval, then geometric midpoints
    law_refit: bool = True  # without a report, a re-run first tries the F* of P(F) fitted to its trials
    params: dict[str, str] = field(default_factory=dict)  # search space in the override grammar


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="kinject")
