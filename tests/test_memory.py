"""The memory a training step needs per GPU, known before a job starts: the estimate against the peak measured on CPU
(fp32 and bf16 autocast, with and without activation checkpointing), its accounting of weights, gradients and
optimizer state by strategy and precision, and the activation checkpointing switch of a run."""

from __future__ import annotations

import lightning as L
import pytest
from omegaconf import OmegaConf

from kinject.cli.train import build_module, build_trainer
from kinject.errors import ConfigError
from kinject.fingerprint import fingerprint
from kinject.run.experiment import prepare
from kinject.training.memory import LOSS_BYTES_PER_VOCAB, estimate_memory, measure_peak_memory
from kinject.training.model import ModelSpec, build
from kinject.validation import validate
from tests.conftest import ROOT


def _spec(hidden: int, layers: int, heads: int, kv_heads: int, vocab: int) -> ModelSpec:
    return ModelSpec("m", hidden, layers, heads, kv_heads, int(8 * hidden / 3) // 64 * 64, vocab, 4096)


def _compare(spec: ModelSpec, seq_len: int, micro_batch: int, precision: str, checkpointing: bool) -> None:
    """Within 25% in all; and what a step adds to the state (weights, gradients and moments are exact byte counts),
    the activations and the loss, within 5% (15% with activation checkpointing, whose peak is a larger sum of parts
    freed and recomputed)."""
    vocab = spec.vocab_size or 0
    measured = measure_peak_memory(
        spec, vocab, seq_len, micro_batch, precision=precision, activation_checkpointing=checkpointing
    )
    estimate = estimate_memory(
        spec,
        vocab,
        seq_len,
        micro_batch,
        strategy="ddp",
        precision=precision,
        world_size=1,
        activation_checkpointing=checkpointing,
    )
    state = estimate.params + estimate.grads + estimate.optimizer
    assert estimate.total == pytest.approx(measured, rel=0.25)
    assert estimate.activations + estimate.logits == pytest.approx(
        measured - state, rel=0.15 if checkpointing else 0.05
    )


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_estimate_is_the_measured_peak_of_a_training_step_on_cpu(checkpointing):
    _compare(_spec(64, 2, 2, 2, 512), 64, 2, "32-true", checkpointing)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize(
    "shape",
    [
        (_spec(128, 2, 2, 2, 2048), 128, 2),  # the loss over the vocabulary the largest part
        (_spec(128, 2, 4, 2, 1024), 128, 4),  # grouped-query attention
        (_spec(256, 3, 4, 4, 512), 128, 2),  # the layers the largest part: a recomputed one outweighs the loss
    ],
    ids=["vocab", "gqa", "layers"],
)
def test_the_estimate_is_the_measured_peak_for_more_shapes_and_in_bf16_autocast(shape, checkpointing, precision):
    spec, seq_len, micro_batch = shape
    _compare(spec, seq_len, micro_batch, precision, checkpointing)


def test_activation_checkpointing_keeps_less_activation_memory_estimated_and_measured():
    spec = _spec(64, 4, 2, 2, 256)
    kept, checkpointed = (
        estimate_memory(
            spec, 256, 64, 4, strategy="ddp", precision="32-true", world_size=1, activation_checkpointing=on
        )
        for on in (False, True)
    )
    assert checkpointed.activations < kept.activations / 3
    assert (checkpointed.params, checkpointed.logits) == (kept.params, kept.logits)
    measured = [measure_peak_memory(spec, 256, 64, 4, activation_checkpointing=on) for on in (False, True)]
    assert measured[1] < measured[0] - (kept.activations - checkpointed.activations) * 0.8


@pytest.mark.parametrize("tie", [False, True])
def test_the_weights_are_the_models_parameters_in_fp32(tie):
    spec = ModelSpec("m", 96, 3, 4, 2, 256, 1000, 512, tie_embeddings=tie)
    parameters = sum(p.numel() for p in build(spec, 1000, device="meta").parameters())
    estimate = estimate_memory(
        spec, 1000, 64, 1, strategy="ddp", precision="32-true", world_size=1, activation_checkpointing=False
    )
    assert (estimate.params, estimate.grads, estimate.optimizer) == (4 * parameters, 4 * parameters, 8 * parameters)


def test_strategy_and_precision_decide_where_the_state_lives():
    """3b on 8 GPUs: DDP holds all fp32 state and its gradient buckets on every GPU, plus autocast's bf16 copy of
    each matmul weight; FSDP2 shards weights and moments and gathers bf16 weights a unit at a time, but holds the
    unsharded fp32 gradients through accumulation."""
    spec = ModelSpec.from_config({**OmegaConf.load(ROOT / "conf" / "model" / "3b.yaml")})
    parameters = sum(p.numel() for p in build(spec, 32000, device="meta").parameters())
    h, vocab, layers = spec.hidden_size, 32000, spec.num_layers
    layer = (parameters - 2 * vocab * h - h) // layers
    matmul = layers * (layer - 2 * h) + vocab * h

    def memory(strategy: str, precision: str, world_size: int = 8):
        return estimate_memory(
            spec,
            vocab,
            2048,
            4,
            strategy=strategy,
            precision=precision,
            world_size=world_size,
            activation_checkpointing=False,
        )

    ddp = memory("ddp", "bf16-mixed")
    assert (ddp.params, ddp.grads, ddp.optimizer) == (4 * parameters + 2 * matmul, 8 * parameters, 8 * parameters)
    assert memory("ddp", "bf16-mixed", world_size=1).grads == 4 * parameters, "no buckets on one device"
    fsdp = memory("fsdp", "bf16-mixed")
    assert fsdp.params == 4 * parameters / 8 + 2 * (2 * vocab * h + h + 2 * layer)
    assert (fsdp.grads, fsdp.optimizer) == (4 * parameters, 8 * parameters / 8)
    assert fsdp.activations < ddp.activations, "bf16 weights keep a bf16 residual stream"
    assert ddp.logits == fsdp.logits == 4 * 2048 * LOSS_BYTES_PER_VOCAB * vocab
    assert memory("fsdp", "32-true").params == 4 * parameters / 8 + 4 * (2 * vocab * h + h + 2 * layer)


def test_an_unknown_precision_or_strategy_is_refused():
    spec = _spec(64, 1, 1, 1, 256)
    with pytest.raises(ValueError, match="precision: expected one of 32-true, bf16-mixed, 16-mixed, got 'bf16-true'"):
        estimate_memory(
            spec, 256, 8, 1, strategy="ddp", precision="bf16-true", world_size=1, activation_checkpointing=False
        )
    with pytest.raises(ValueError, match="strategy: expected one of ddp, fsdp, got 'deepspeed'"):
        estimate_memory(
            spec, 256, 8, 1, strategy="deepspeed", precision="32-true", world_size=1, activation_checkpointing=False
        )


@pytest.mark.slow
def test_activation_checkpointing_is_a_switch_that_changes_memory_not_what_is_learned(make_cfg):
    """The same tiny run with and without it: every decoder layer checkpointed, the same losses, one fingerprint."""
    losses = []
    for on in (False, True):
        cfg = make_cfg(f"activation_checkpointing={str(on).lower()}", "tokens=4096", "eval.heldout_sequences=0")
        experiment = prepare(cfg)
        L.seed_everything(0, verbose=False)
        module = build_module(cfg, experiment)
        assert all(layer.gradient_checkpointing is on for layer in module.model.model.layers)
        build_trainer(cfg, experiment, [], []).fit(module, datamodule=experiment.datamodule)
        losses.append(float(module.last_loss))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    on, off = (
        OmegaConf.to_container(make_cfg(f"activation_checkpointing={v}"), resolve=True) for v in ("true", "false")
    )
    assert fingerprint(on) == fingerprint(off)


def test_activation_checkpointing_is_true_or_false(make_cfg):
    validate(make_cfg("activation_checkpointing=true"))
    with pytest.raises(ConfigError, match="^activation_checkpointing: expected true or false, got 1"):
        validate(make_cfg("activation_checkpointing=1"))
