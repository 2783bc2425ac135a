"""Exact resume of the streamed background: through Lightning (prefetch included), with 0 and 2 loader
workers, and across 2 simulated ranks; every batch is compared with the pure function of its index."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from kinject.data.background import LanePosition
from kinject.run.experiment import prepare
from kinject.training.checkpoint import AtomicCheckpointIO
from tests.corpus_files import local

STEPS = 6
CRASH_AT = 3


class Recorder(L.LightningModule):
    """Records the sequences each step trains on; optionally crashes at a step."""

    def __init__(self, crash_at: int | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.crash_at = crash_at
        self.seen: dict[int, torch.Tensor] = {}
        self.steps: list[int] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.global_step == self.crash_at:
            raise RuntimeError("simulated crash")
        self.steps.append(self.global_step)
        self.seen.update(zip(batch["index"].tolist(), batch["input_ids"]))
        return self.weight.square().sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(experiment, module: Recorder, root, ckpt_path=None) -> None:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        accumulate_grad_batches=experiment.budget.accumulation,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            ModelCheckpoint(
                dirpath=root, filename="last", every_n_train_steps=2, save_top_k=1, enable_version_counter=False
            )
        ],
    )
    trainer.fit(module, datamodule=experiment.datamodule, ckpt_path=ckpt_path)


def _assert_is_the_pure_stream(seen: dict[int, torch.Tensor], reference, indices: range) -> None:
    assert sorted(seen) == list(indices)
    for i in indices:
        assert torch.equal(seen[i], reference[i]["input_ids"]), i


@pytest.mark.parametrize("workers, budget", [(0, "fixed_total"), (2, "fixed_total"), (0, "fixed_background")])
def test_stopped_and_resumed_run_sees_the_uninterrupted_token_sequence(make_cfg, fineweb, tmp_path, workers, budget):
    cfg = local(
        make_cfg,
        fineweb[0],
        f"data.num_workers={workers}",
        f"tokens={STEPS * 8 * 64}",
        "infusion.freq=1",
        f"infusion.budget={budget}",
    )
    batch = prepare(cfg).budget.batch_size
    reference = prepare(cfg).datamodule.dataset

    straight = Recorder()
    _fit(prepare(cfg), straight, tmp_path / "straight")
    _assert_is_the_pure_stream(straight.seen, reference, range(STEPS * batch))

    crashed = Recorder(crash_at=CRASH_AT)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(prepare(cfg), crashed, tmp_path / "crashed")
    checkpoint = torch.load(tmp_path / "crashed" / "last.ckpt", weights_only=True)
    saved = checkpoint["InfusionDataModule"]["positions"].numpy()
    resumed = Recorder()
    _fit(prepare(cfg), resumed, tmp_path / "crashed", ckpt_path=str(tmp_path / "crashed" / "last.ckpt"))

    assert checkpoint["global_step"] == 2 and resumed.steps[0] == 2
    _assert_is_the_pure_stream(resumed.seen, reference, range(2 * batch, STEPS * batch))
    dataset = prepare(cfg).datamodule.dataset
    replay = dataset.background
    assert len(saved) == min(2, replay.groups) * batch
    for row in saved:
        position = LanePosition.of(row)
        lane = position.lane
        g, j = divmod(lane, batch)
        last = ((position.chunk - 1) * replay.groups + g) * batch + j
        assert np.array_equal(replay.chunk(last, dataset.lengths)[1], row), (
            "the saved position is the one after the last consumed chunk"
        )


def _consume(datamodule, start: int, steps: int, rank: int, world: int) -> dict[int, torch.Tensor]:
    """What one rank trains on for some steps, each batch passed through the hook training calls."""
    budget_batches = steps * datamodule.batch_size // (datamodule.micro_batch_size * world)
    seen: dict[int, torch.Tensor] = {}
    batches = iter(datamodule.loader(start, rank, world))
    for _ in range(budget_batches):
        batch = datamodule.on_before_batch_transfer(next(batches), 0)
        seen.update(zip(batch["index"].tolist(), batch["input_ids"]))
    return seen


def test_two_ranks_read_the_step_of_one_and_resume_on_either_world_size(make_cfg, fineweb):
    cfg = local(make_cfg, fineweb[0], "data.num_workers=0")
    reference = prepare(cfg).datamodule.dataset
    batch = reference.background.batch_size
    ranks = [prepare(cfg).datamodule for _ in range(2)]
    seen = {}
    for rank, datamodule in enumerate(ranks):
        part = _consume(datamodule, 0, 3, rank, 2)
        assert not seen.keys() & part.keys()
        seen.update(part)
    _assert_is_the_pure_stream(seen, reference, range(3 * batch))

    state = {"positions": torch.cat([d.state_dict()["positions"] for d in ranks])}
    for world in (1, 2):
        resumed = {}
        for rank in range(world):
            datamodule = prepare(cfg).datamodule
            datamodule.load_state_dict(state)
            resumed.update(_consume(datamodule, 3, 2, rank, world))
        _assert_is_the_pure_stream(resumed, reference, range(3 * batch, 5 * batch))


def test_a_checkpoint_from_before_the_empty_document_count_resumes(make_cfg, fineweb):
    """Lane positions saved with one counter fewer load as rows of today's width (the new counter at 0), so a
    checkpoint saved after some lanes were read again stacks them without error."""
    datamodule = prepare(local(make_cfg, fineweb[0])).datamodule
    width = len(LanePosition(0).array())
    old = np.arange(2 * (width - 1)).reshape(2, width - 1)
    datamodule.load_state_dict({"positions": torch.from_numpy(old)})
    datamodule.positions[99] = LanePosition(99, empty_documents=3).array()
    rows = datamodule.state_dict()["positions"].numpy()
    assert rows.shape == (3, width)
    assert rows[:2, :-1].tolist() == old.tolist() and rows[:2, -1].tolist() == [0, 0]
