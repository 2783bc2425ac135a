import json
import math

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from kinject.training.model import ModelSpec, build, count_params
from tests.conftest import ROOT, write_checkpoint

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


def _tiny(make_cfg, *overrides: str):
    """A module and trainer of a two-step smoke run, as train.py builds them."""
    from kinject.cli.train import build_module, build_trainer
    from kinject.run.experiment import prepare

    cfg = make_cfg("tokens=1024", "infusion.freq=0", "eval.every_n_steps=0", *overrides)
    experiment = prepare(cfg)
    return build_module(cfg, experiment), experiment, lambda callbacks: build_trainer(cfg, experiment, [], callbacks)


def test_training_forwards_build_no_kv_cache():
    model = build(ModelSpec("t", 32, 2, 2, 2, 64, None, 16), 100)
    ids = torch.randint(0, 100, (2, 8))
    assert model(input_ids=ids, labels=ids).past_key_values is None
    assert model.config.use_cache is False


def test_an_export_turns_the_kv_cache_back_on_for_generation(make_cfg, tmp_path):
    from transformers import AutoModelForCausalLM

    from kinject.cli.evaluate import export

    checkpoint = write_checkpoint(make_cfg(), tmp_path / "last.ckpt")
    folder = export(checkpoint, tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["use_cache"] is True
    assert AutoModelForCausalLM.from_pretrained(folder).config.use_cache is True


class _GradientNorms(L.Callback):
    """The gradient norm before clipping (Lightning's hook runs before it) and as the optimizer steps on it."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.stepped: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.before.append(_norm(pl_module))

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.optimizers[0].register_step_post_hook(lambda *args: self.stepped.append(_norm(pl_module)))


def _norm(module) -> float:
    return float(torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None]))


def test_gradients_are_clipped_to_the_trainer_setting_by_the_module(make_cfg):
    """Clipping moved from Lightning's precision plugin (which refuses a fused optimizer) into the module."""
    module, experiment, trainer = _tiny(make_cfg, "trainer.gradient_clip_val=0.001")
    norms = _GradientNorms()
    trainer([norms]).fit(module, datamodule=experiment.datamodule)
    assert len(norms.stepped) == 2 and min(norms.before) > 0.01
    assert norms.stepped == pytest.approx([0.001, 0.001], rel=1e-3)
    assert module.trainer.optimizers[0].defaults["fused"] is False, "the plain loop on the CPU"


@pytest.mark.gpu
def test_on_a_gpu_adamw_is_fused_and_still_clipped_under_bf16(make_cfg):
    module, experiment, trainer = _tiny(make_cfg, "trainer=gpu", "trainer.gradient_clip_val=0.001")
    norms = _GradientNorms()
    fitted = trainer([norms])
    fitted.fit(module, datamodule=experiment.datamodule)
    assert fitted.precision == "bf16-mixed" and fitted.optimizers[0].defaults["fused"] is True
    assert norms.stepped == pytest.approx([0.001, 0.001], rel=1e-2)


@pytest.mark.slow
def test_compile_compiles_each_decoder_layer_in_place_and_the_run_trains(make_cfg):
    module, experiment, trainer = _tiny(make_cfg, "compile=true")
    keys = set(module.state_dict())
    layers = list(module.model.model.layers)
    assert layers and all(layer._compiled_call_impl is not None for layer in layers)
    assert module.model._compiled_call_impl is None, "not the whole model: graph breaks at FSDP's hooks"
    fitted = trainer([])
    fitted.fit(module, datamodule=experiment.datamodule)
    assert fitted.global_step == 2 and math.isfinite(float(fitted.callback_metrics["train/loss"]))
    assert set(module.state_dict()) == keys, "checkpoints keep their keys"


PUBLIC = {"smollm2_135m": 134.5e6, "smollm2_360m": 361.8e6, "smollm2_1.7b": 1.711e9}  # as published, tied embeddings


@pytest.mark.parametrize("name", list(PUBLIC))
def test_the_public_ladder_counts_its_published_parameters(name):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}"])
    spec = ModelSpec.from_config(cfg.model)
    model = build(spec, spec.vocab_size, device="meta")
    total, _ = count_params(model)
    assert total == pytest.approx(PUBLIC[name], rel=2e-3)
    assert model.config.rms_norm_eps == 1e-5 and model.config.tie_word_embeddings


@pytest.mark.slow
def test_a_run_evaluates_before_its_first_step_and_logs_it_unless_told_not_to(make_cfg):
    from lightning.pytorch.loggers import Logger

    from kinject.cli.train import build_trainer
    from kinject.training.callbacks import TrainingEvaluation

    class Recording(Logger):
        name, version = "recording", "0"

        def __init__(self) -> None:
            super().__init__()
            self.steps: list[int | None] = []

        def log_metrics(self, metrics, step=None) -> None:
            if "memorization/acc_sum" in metrics:
                self.steps.append(step)

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass

    cfg = make_cfg("tokens=1024", "infusion.freq=0", "eval.every_n_steps=0")
    for at_start in (True, False):
        module, experiment, _ = _tiny(make_cfg)
        evaluation = TrainingEvaluation(experiment.evaluator, 0, experiment.budget.tokens_per_step, at_start)
        recording = Recording()
        build_trainer(cfg, experiment, [recording], [evaluation]).fit(module, datamodule=experiment.datamodule)
        assert evaluation.final is not None
        if at_start:
            assert [point["step"] for point in evaluation.curve] == [0] and recording.steps == [0]
            assert set(evaluation.curve[0]) >= set(evaluation.final.metrics)
        else:
            assert evaluation.curve == [] and recording.steps == [], "eval.at_start=false: no step-0 evaluation"
