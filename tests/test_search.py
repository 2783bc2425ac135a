"""The Optuna sweeper (hydra/sweeper=optuna): a resumable total, failed trials, a law-informed start, Pareto sets."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.kinject_optuna.config import OptunaSweeperConf
from hydra_plugins.kinject_optuna.sweeper import FREQ, law_estimate, search_space, warm_start_points
from kinject.errors import ConfigError
from tests.conftest import ROOT, TINY, console_script

REPORT = {
    "schema": "kinject.fit_law/1",
    "laws": [],
    "models": [
        {"group": "tiny", "f_star": 8.0, "f_star_ci": [2.0, 2000.0], "message": "F* = 8"},
        {"group": "small", "f_star": None, "f_star_ci": None, "message": "no interior optimum: c <= 0"},
    ],
}


def _search(root: Path, cache_dir: Path, n_trials: int, storage: Path) -> None:
    """The real CLI (the kinject-train console script, run outside the checkout) on the smoke preset, whose budget
    F = 2000 exceeds: that trial fails."""
    report = root / "report.json"
    report.write_text(json.dumps(REPORT))
    command = [
        console_script("kinject-train"),
        "-m",
        *TINY,
        "experiment=[smoke,search_freq]",
        "infusion.freq=tag(log, int(interval(1, 4096)))",
        f"paths.cache_dir={cache_dir}",
        f"hydra.sweep.dir={root / 'sweep'}",
        "paths.output_dir=${hydra:runtime.output_dir}",
        f"hydra.sweeper.storage=sqlite:///{storage}",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.law_report={report}",
        "hydra.sweeper.law_group=tiny",
    ]
    # from a folder other than the checkout: the installed console script finds the sweeper plugin
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _trials(storage: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="test", storage=f"sqlite:///{storage}").trials


# its tests run on one pytest-xdist worker (--dist loadgroup), which builds the fixture once
with_searched = pytest.mark.xdist_group("searched")


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A 4-trial search whose report puts F* at 8 within [2, 2000]."""
    root = tmp_path_factory.mktemp("search")
    _search(root, cache_dir, 4, root / "study.db")
    return root


@with_searched
@pytest.mark.slow
def test_a_search_stores_its_trials_and_each_is_a_normal_run(searched):
    trials = _trials(searched / "study.db")
    assert len(trials) == 4
    records = [json.loads(p.read_text()) for p in (searched / "sweep").rglob("results.json")]
    by_freq = {
        r["infusion"]["freq"]: r["metrics"]["memorization/acc_token"] for r in records if r["status"] == "complete"
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and {t.params[FREQ]: t.value for t in complete} == by_freq
    best = OmegaConf.load(searched / "sweep" / "optimization_results.yaml")
    assert best.best_value == max(t.value for t in complete)


@with_searched
@pytest.mark.slow
def test_the_law_informed_start_places_the_first_trials_where_the_report_says(searched):
    assert [t.params[FREQ] for t in _trials(searched / "study.db")[:3]] == [8, 2, 2000]


@with_searched
@pytest.mark.slow
def test_a_failing_trial_is_recorded_as_failed_and_the_search_goes_on(searched):
    trials = _trials(searched / "study.db")
    assert trials[2].params[FREQ] == 2000 and trials[2].state == TrialState.FAIL
    assert trials[3].state.is_finished()


@with_searched
@pytest.mark.slow
def test_a_rerun_continues_the_study_up_to_its_total(searched, tmp_path, cache_dir):
    storage = tmp_path / "study.db"
    shutil.copy(searched / "study.db", storage)
    _search(tmp_path, cache_dir, 6, storage)
    before, after = _trials(searched / "study.db"), _trials(storage)
    assert len(after) == 6 and all(t.state.is_finished() for t in after)
    assert [(t.params, t.state, t.values) for t in after[:4]] == [(t.params, t.state, t.values) for t in before]


def test_the_override_grammar_maps_to_optuna_distributions():
    space, fixed = search_space(
        OverridesParser.create().parse_overrides(
            [
                "infusion.freq=tag(log, int(interval(1, 1024)))",
                "optim.lr=interval(0.0001, 0.01)",
                "infusion.format=choice(statement, qa)",
                "seed=range(0, 10, 4)",
                "model=choice(tiny, small)",
                "model=small",
                "tokens=8192",
            ]
        )
    )
    assert space == {
        FREQ: IntDistribution(1, 1024, log=True),
        "optim.lr": FloatDistribution(0.0001, 0.01),
        "infusion.format": CategoricalDistribution(["statement", "qa"]),
        "seed": IntDistribution(0, 8, step=4),
    }
    assert fixed == {"model": "model=small", "tokens": "tokens=8192"}


def test_warm_start_points_begin_at_f_star_and_its_interval_and_never_repeat():
    space = IntDistribution(1, 1024, log=True)
    points = warm_start_points(40.2, [None, 300.0], 6, space)
    assert points[:3] == [40, 1, 300] and len(set(points)) == 6 and all(1 <= p <= 300 for p in points)
    assert warm_start_points(3.0, [2.0, 4.0], 10, space) == [3, 2, 4]
    assert warm_start_points(5000.0, [100.0, 9000.0], 2, space) == [1024, 100]


def test_law_estimate_reads_a_group_or_the_only_prediction_and_names_what_is_missing():
    assert law_estimate(REPORT, "tiny") == (8.0, [2.0, 2000.0])
    predicted = {**REPORT, "laws": [{"predictions": [{"f_star": 30.0, "interval": [10.0, None]}]}]}
    assert law_estimate(predicted, None) == (30.0, [10.0, None])
    with pytest.raises(ConfigError, match=r"law_group: .*\['tiny', 'small'\], got 'huge'"):
        law_estimate(REPORT, "huge")
    with pytest.raises(ConfigError, match="no interior optimum"):
        law_estimate(REPORT, "small")
    with pytest.raises(ConfigError, match="0 predictions"):
        law_estimate(REPORT, None)


def _peak(freq: float) -> float:
    """P(F) = a F^b exp(-cF) with its optimum at F* = b/c = 40."""
    return 0.05 * freq * np.exp(-freq / 40)


class ScoringLauncher:
    """Scores each trial's F with a known function instead of training it."""

    def __init__(self, score: Callable[[int], float | tuple[float, ...]]) -> None:
        self.score = score

    def launch(self, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        freqs = [int(dict(o.split("=", 1) for o in overrides)[FREQ]) for overrides in job_overrides]
        return [
            JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=self.score(f))
            for o, f in zip(job_overrides, freqs)
        ]


def _sweep(tmp_path: Path, score: Callable[[int], float | tuple[float, ...]], **settings) -> optuna.Study:
    conf = OmegaConf.merge(
        OmegaConf.structured(OptunaSweeperConf),
        {
            "study_name": "fake",
            "storage": f"sqlite:///{tmp_path / 'fake.db'}",
            "params": {FREQ: "tag(log, int(interval(1, 256)))"},
            **settings,
        },
    )
    sweeper = instantiate(conf)
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher = ScoringLauncher(score)
    sweeper.sweep([])
    return optuna.load_study(study_name="fake", storage=conf.storage)


def test_a_rerun_without_a_report_first_tries_the_f_star_fitted_to_its_trials(tmp_path):
    first = _sweep(tmp_path, _peak, n_trials=5).trials
    assert 40 not in [t.params[FREQ] for t in first]
    assert _sweep(tmp_path, _peak, n_trials=6).trials[5].params[FREQ] == 40


def test_a_pareto_search_returns_the_trials_no_other_beats_on_both_objectives(tmp_path):
    study = _sweep(tmp_path, lambda f: (_peak(f), 1 + f / 100), n_trials=8, direction=["maximize", "minimize"])
    best_freq = max(study.trials, key=lambda t: t.values[0]).params[FREQ]
    solutions = OmegaConf.load(tmp_path / "optimization_results.yaml").solutions
    assert {s.number for s in solutions} == {t.number for t in study.trials if t.params[FREQ] <= best_freq}


def test_the_pareto_preset_pairs_each_metric_with_a_direction():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=search_freq_pareto"], return_hydra_config=True)
    assert list(cfg.metric) == ["memorization/acc_token", "heldout/loss"]
    assert list(cfg.hydra.sweeper.direction) == ["maximize", "minimize"]
