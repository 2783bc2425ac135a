"""An Optuna search launched like any Hydra sweep, on Optuna's ask/tell API (Optuna 4 and newer).

    python train.py -m experiment=search_freq model=small sweep=small_freq

The published hydra-optuna-sweeper pins optuna < 3. This one keeps its override grammar and config
keys, counts `n_trials` as the study's total so that a re-run resumes, records a failing trial as
failed and goes on, and starts where the knowledge-infusion law puts F*. Usage: docs/search.md.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from kinject.errors import ConfigError

log = logging.getLogger(__name__)

FREQ = "infusion.freq"
Numeric = IntDistribution | FloatDistribution


def distribution(override: Override) -> BaseDistribution:
    """interval -> a (log with `tag(log, ...)`) range, int(interval) -> integers, range -> stepped
    integers, choice and shuffled or float ranges -> categories."""
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(sweep.start, sweep.end, log=log_scale)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if isinstance(sweep, RangeSweep) and not sweep.shuffle and all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values), step=abs(int(sweep.step)))
    return CategoricalDistribution(values)


def search_space(overrides: Sequence[Override]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Sweeps become distributions and anything else is passed to every trial; for a key given
    twice the later override wins, as on Hydra's command line."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in overrides:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.input_line
    return space, fixed


def law_estimate(report: Mapping[str, Any], group: str | None) -> tuple[float, Sequence[float | None] | None]:
    """F* and its interval from a fit_law.py report: a model group's, or without a group the
    report's only prediction (fit_law.py --predict N:D), for a size not trained yet."""
    groups = [model["group"] for model in report["models"]]
    if group is None:
        predictions = [p for law in report["laws"] for p in law.get("predictions", [])]
        if len(predictions) != 1:
            raise ConfigError(
                "hydra.sweeper.law_group",
                f"a model group of the report, one of {groups}",
                hint=f"the report holds {len(predictions)} predictions, so none is taken by default",
            )
        f_star, interval, why = predictions[0]["f_star"], predictions[0]["interval"], "no F* predicted"
    else:
        model = next((m for m in report["models"] if m["group"] == group), None)
        if model is None:
            raise ConfigError("hydra.sweeper.law_group", f"a model group of the report, one of {groups}", group)
        f_star, interval, why = model["f_star"], model["f_star_ci"], model["message"]
    if f_star is None:
        raise ConfigError("hydra.sweeper.law_report", f"an F* for {group or 'the prediction'}", hint=why)
    return f_star, interval


def _snap(value: float, space: Numeric) -> float:
    value = min(max(value, space.low), space.high)
    if isinstance(space, IntDistribution):
        return space.low + space.step * round((value - space.low) / space.step)
    return value


def warm_start_points(
    f_star: float, interval: Sequence[float | None] | None, count: int, space: Numeric
) -> list[float]:
    """F*, the ends of its interval (an open end stands for the search bound), then the midpoints of
    the widest gaps on a log(1 + F) scale: snapped into the search space, never twice the same."""
    lo, hi = interval or (None, None)
    anchors = (f_star, space.low if lo is None else lo, space.high if hi is None else hi)
    points = list(dict.fromkeys(_snap(value, space) for value in anchors))
    while len(points) < count:
        ordered = sorted(points)
        widest_first = sorted(
            zip(ordered, ordered[1:]), key=lambda gap: math.log1p(gap[1]) - math.log1p(gap[0]), reverse=True
        )
        middles = (_snap(math.expm1((math.log1p(a) + math.log1p(b)) / 2), space) for a, b in widest_first)
        fresh = next((m for m in middles if m not in points), None)
        if fresh is None:
            break
        points.append(fresh)
    return points[:count]


def fitted_optimum(study: optuna.Study) -> float | None:
    """b/c of P(F) = a F^b exp(-cF) fitted to the completed trials, None without an interior maximum.
    A point to try rather than a result to report: unlike fit_law.py it is taken even while the best
    trial is still at an edge of the tried F, where one more trial tells the most."""
    from kinject.law.curves import Curve, fit_curve  # scipy: imported when a search fits, not at every Hydra start

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if FREQ in t.params]
    freq = np.array([t.params[FREQ] for t in trials], float)
    acc = np.array([t.value for t in trials], float)
    fit = fit_curve(
        Curve(freq=freq, acc=acc, n_items=np.full(freq.size, np.nan)), n_boot=0, rng=np.random.default_rng(0)
    )
    return fit.plain.f_star if fit.plain else None


class OptunaSweeper(Sweeper):
    """Asks Optuna for a batch of trials, launches them as Hydra jobs, tells it their results."""

    def __init__(
        self,
        n_trials: int,
        n_jobs: int,
        direction: str | Sequence[str],
        study_name: str,
        storage: str,
        sampler: Mapping[str, Any],
        law_report: str | None,
        law_group: str | None,
        warm_start_trials: int,
        law_refit: bool,
        params: Mapping[str, str],
    ) -> None:
        if n_jobs < 1:
            raise ConfigError("hydra.sweeper.n_jobs", "at least 1 trial per batch", n_jobs)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.directions = [direction] if isinstance(direction, str) else list(direction)
        self.study_name = study_name
        self.storage = storage
        self.sampler = sampler
        self.law_report = law_report
        self.law_group = law_group
        self.warm_start_trials = warm_start_trials
        self.law_refit = law_refit
        self.params = dict(params)
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        configured = [f"{key}={value}" for key, value in self.params.items()]
        space, fixed = search_space(OverridesParser.create().parse_overrides([*configured, *arguments]))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = self._study()
        finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))
        remaining = self.n_trials - finished
        log.info(
            "study %s (%s): %d of %d trials finished, %d to run",
            self.study_name,
            self.storage,
            finished,
            self.n_trials,
            max(remaining, 0),
        )
        if remaining > 0:
            self._warm_start(study, space)
        while remaining > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            batch = [[*fixed.values(), *(f"{k}={v}" for k, v in t.params.items())] for t in trials]
            for trial, job in zip(trials, self.launcher.launch(batch, initial_job_idx=trials[0].number)):
                self._tell(study, trial, job)
            remaining -= len(trials)
        self._summarize(study, sweep_dir)

    def _study(self) -> optuna.Study:
        url = make_url(self.storage)
        if url.get_backend_name() == "sqlite" and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            storage=self.storage, study_name=self.study_name, directions=self.directions, load_if_exists=True
        )
        seed = self.sampler.get("seed")
        # A re-run seeds past the stored trials: it continues the search instead of replaying its first draws.
        study.sampler = instantiate(self.sampler, **({} if seed is None else {"seed": seed + len(study.trials)}))
        return study

    def _warm_start(self, study: optuna.Study, space: Mapping[str, BaseDistribution]) -> None:
        """Queues F* and its interval from the report, or without one the F* fitted to the trials of
        a maximized P(F); each point is tried once per study, before the sampler takes over."""
        freq = space.get(FREQ)
        if not isinstance(freq, Numeric):
            if self.law_report:
                raise ConfigError(
                    "hydra.sweeper.params", f"{FREQ} searched over an interval for a law-informed start", freq
                )
            return
        if self.law_report:
            estimate = law_estimate(json.loads(Path(self.law_report).read_text()), self.law_group)
            points = warm_start_points(*estimate, self.warm_start_trials, freq)
        elif self.law_refit and study.directions == [StudyDirection.MAXIMIZE]:
            f_star = fitted_optimum(study)
            points = [] if f_star is None else [_snap(f_star, freq)]
        else:
            return
        for point in points:
            study.enqueue_trial({FREQ: point}, skip_if_exists=True)
        if points:
            log.info("law-informed start: %s = %s, each once per study", FREQ, points)

    @staticmethod
    def _tell(study: optuna.Study, trial: optuna.Trial, job: JobReturn) -> None:
        try:
            values = job.return_value
        except Exception as error:
            log.warning("trial %d failed, the search goes on: %s", trial.number, error)
            study.tell(trial, state=TrialState.FAIL)
            return
        told = study.tell(trial, values)
        log.info("trial %d %s: %s -> %s", told.number, told.state.name.lower(), told.params, told.values)

    def _summarize(self, study: optuna.Study, sweep_dir: Path) -> None:
        """Logs the best trial (with several objectives the Pareto set) and writes it to
        optimization_results.yaml, as hydra-optuna-sweeper does."""
        best = study.best_trials
        summary: dict[str, Any] = {
            "name": "optuna",
            "study_name": self.study_name,
            "storage": self.storage,
            "directions": self.directions,
        }
        if len(self.directions) > 1:
            summary["solutions"] = [{"number": t.number, "params": t.params, "values": t.values} for t in best]
        elif best:
            summary |= {"best_number": best[0].number, "best_params": best[0].params, "best_value": best[0].value}
        for trial in best:
            log.info("best: trial %d, %s -> %s", trial.number, trial.params, trial.values)
        if not best:
            log.warning("no trial of study %s completed", self.study_name)
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / "optimization_results.yaml")
