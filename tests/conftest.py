"""Shared fixtures: a tiny world and budget composed through Hydra, so tests run in seconds on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from tests.corpus_files import ROW_GROUPS, ROWS_PER_GROUP, documents, write_parquet

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "experiment=smoke",
    "logger=none",
    "run_name=test",
    "sweep=test",
    "trainer.enable_progress_bar=false",
    "threads=1",
    "eval.at_start=false",  # a test of the step-0 evaluation turns it back on
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` first, so that pytest-xdist's workers end on short ones instead of one waiting for the
    other's long test; tests marked `gpu` run only where CUDA is available."""
    items.sort(key=lambda item: "slow" not in item.keywords)
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def console_script(name: str) -> str:
    """The path of an installed console script of this environment (`pip install -r requirements.txt`)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not installed in {path.parent}: run `pip install -r requirements.txt`"
    return str(path)


def write_checkpoint(cfg: DictConfig, path: Path) -> Path:
    """A kinject checkpoint of an untrained model of `cfg` (random weights: seed torch first to fix them), as
    train.py writes one: the config, the module's hyperparameters and its weights."""
    from kinject.run.experiment import prepare
    from kinject.training.lightning_module import CausalLM

    module = CausalLM(OmegaConf.to_container(cfg.model, resolve=True), vocab_size=prepare(cfg).vocab_size)
    checkpoint = {
        "kinject_config": OmegaConf.to_container(cfg, resolve=True),
        "hyper_parameters": dict(module.hparams),
        "state_dict": module.state_dict(),
    }
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_cfg(tmp_path: Path, cache_dir: Path):
    """Compose the real config with tiny overrides; later overrides win."""

    def make(*overrides: str, output_dir: Path | None = None) -> DictConfig:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            return compose(
                "config",
                overrides=[
                    *TINY,
                    f"paths.output_dir={output_dir or tmp_path / 'run'}",
                    f"paths.cache_dir={cache_dir}",
                    *overrides,
                ],
            )

    return make


@pytest.fixture
def fineweb(tmp_path: Path) -> tuple[str, list[str]]:
    """Three parquet files of 3, 4 and 2 row groups; the glob and every text in file order."""
    folder = tmp_path / "fineweb"
    folder.mkdir()
    texts: list[str] = []
    for number, groups in enumerate(ROW_GROUPS):
        part = documents(groups * ROWS_PER_GROUP, start=len(texts))
        write_parquet(folder / f"{number:03d}_00000.parquet", part)
        texts += part
    return str(folder / "*.parquet"), texts
