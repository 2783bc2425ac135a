import pytest
from hydra import compose, initialize_config_dir

from kinject.training.model import ModelSpec, build, count_params
from tests.conftest import ROOT

LADDER = {"137m": 137e6, "300m": 300e6, "562m": 562e6, "1.05b": 1.05e9, "3b": 3e9}


@pytest.mark.parametrize("name", list(LADDER))
def test_ladder_sizes_match_their_names(name):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}"])
    spec = ModelSpec.from_config(cfg.model)
    total, non_embedding = count_params(build(spec, spec.vocab_size, device="meta"))
    print(f"{name}: {total / 1e6:.1f}M total, {non_embedding / 1e6:.1f}M non-embedding")
    assert abs(total - LADDER[name]) / LADDER[name] < 0.05
    assert non_embedding < total


def test_non_embedding_count_excludes_both_embedding_matrices():
    total, non_embedding = count_params(build(ModelSpec("t", 32, 2, 2, 2, 64, None, 16), 100))
    assert total - non_embedding == 2 * 100 * 32
