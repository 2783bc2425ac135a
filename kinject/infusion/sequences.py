"""The training stream: background text with templated facts spliced in, as fixed-length sequences.

Sequence i of the run is a pure function of (config, seed, i): the facts the schedule puts there
(each as its own document, EOS first, as the evaluation prompts begin; a block is such documents
back to back), then the rest of the i-th background chunk. Chunk i is the same at every
F, but the injected texts displace its head: the total budget is fixed, so a run at higher F trains
on less background (`Experiment.budget_summary` counts both). A run reads sequences by global index
from its optimizer step on, which makes resume exact and the data per step the same for any number of devices.

A background is either random access (the embedded world, tokenized once) or a set of streamed
lanes (`kinject.data.background`); a streamed one reports, with every chunk, the position that resumes
after it, and the data module keeps the positions of the batches training has consumed (not the
ones Lightning has prefetched) for the checkpoint.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, default_collate, get_worker_info

from kinject.budget import Budget, accumulation, check_injection, check_room
from kinject.data.background import Background, LanePosition
from kinject.data.filtering import FilterStats
from kinject.data.tokenizer import encode_documents
from kinject.infusion.formats import InfusionConfig, render, variants
from kinject.infusion.schedule import Schedule
from kinject.knowledge.facts import KnowledgeSet


class ExposureTexts:
    """The tokenized text of every (fact, variant) a run injects, each tokenized once, and how many tokens
    the F exposures of all facts take (known before any exposure is placed)."""

    def __init__(self, knowledge: KnowledgeSet, infusion: InfusionConfig, tokenizer) -> None:
        per_exposure = variants(np.arange(infusion.freq), infusion).tolist()
        distinct = sorted({(f, v) for f in range(len(knowledge.facts)) for v in set(per_exposure)})
        texts = [render(knowledge, knowledge.facts[f], v, infusion) for f, v in distinct]
        self.infusion = infusion
        self.tokens = dict(zip(distinct, encode_documents(tokenizer, texts)))
        self.total = sum(len(self.tokens[(f, v)]) for f in range(len(knowledge.facts)) for v in per_exposure)
        self.num_facts = len(knowledge.facts)

    def lengths(self) -> np.ndarray:
        """Tokens of each exposure: row k, column f is fact f's k-th (for packing them into blocks)."""
        per_exposure = variants(np.arange(self.infusion.freq), self.infusion).tolist()
        return np.array(
            [[len(self.tokens[(f, v)]) for f in range(self.num_facts)] for v in per_exposure], dtype=np.int64
        ).reshape(len(per_exposure), self.num_facts)


class InfusedSequences(Dataset):
    """Training sequence i: the facts scheduled there, then background. With `fixed_total` the background
    is the tail of chunk i (injection displaces it); with `fixed_background` it is the next stretch of its
    background stream (the corpus held in memory, or the lane of a streamed one), which every F reads in the
    same order."""

    def __init__(
        self, background: Background, schedule: Schedule, texts: ExposureTexts, seq_len: int, sequences: int
    ) -> None:
        self.background = background
        self.schedule = schedule
        self.seq_len = seq_len
        self.variants = variants(schedule.exposure, texts.infusion)
        self._text = texts.tokens
        pairs = zip(schedule.fact.tolist(), self.variants.tolist())
        self.exposure_tokens = np.array([len(self._text[p]) for p in pairs], dtype=np.int64)
        self.injected_tokens = int(self.exposure_tokens.sum())
        self.lengths: np.ndarray | None = None  # background tokens of each sequence, with fixed_background
        if texts.infusion.budget == "fixed_background":
            used = np.bincount(schedule.sequence, weights=self.exposure_tokens, minlength=sequences).astype(np.int64)
            self.lengths = seq_len - used

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        span = self.schedule.at(index)
        facts = self.schedule.fact[span].tolist()
        variants = self.variants[span].tolist()
        injected = [self._text[p] for p in zip(facts, variants)]
        used = sum(len(t) for t in injected)
        chunk, position = self.background.chunk(index, self.lengths)
        if self.lengths is None:
            chunk = chunk[used:]
        tokens = np.concatenate([*injected, chunk]) if injected else chunk
        return {
            "input_ids": torch.from_numpy(tokens.astype(np.int64)),
            "index": torch.tensor(index),
            "injected": torch.tensor(used),
            "position": torch.from_numpy(position),
        }


def check_fits(dataset: InfusedSequences, budget: Budget, freq: int, max_share: float) -> None:
    """Refuses, before training, an injection over `max_share` of the budget or a sequence it would overflow."""
    check_injection(budget, dataset.injected_tokens, len(dataset.exposure_tokens), freq, max_share)
    if len(dataset.exposure_tokens):
        per_sequence = np.bincount(dataset.schedule.sequence, weights=dataset.exposure_tokens)
        check_room(int(per_sequence.max()), budget.seq_len)


class StepSampler(Sampler[int]):
    """Global sequence indices for one rank, from an optimizer step on, endlessly.

    Step s uses sequences [s*B, (s+1)*B) whatever the device count and accumulation, so the data
    of each step is the same on 1 or 8 GPUs; the run is bounded by max_steps, not by this sampler.
    """

    def __init__(self, batch_size: int, micro_batch_size: int, rank: int, world_size: int, start_step: int) -> None:
        self.batch_size = batch_size
        self.micro = micro_batch_size
        self.rank = rank
        self.world = world_size
        self.start_step = start_step
        self.accumulation = accumulation(batch_size, micro_batch_size, world_size)

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            for a in range(self.accumulation):
                base = step * self.batch_size + (a * self.world + self.rank) * self.micro
                yield from range(base, base + self.micro)
            step += 1


class StepBatches(IterableDataset):
    """One rank's micro-batches in the sampler's order; loader worker w of W builds every W-th.

    DataLoader hands out batch n from worker n % W, so the order is the same for any W. A lane is
    then always built by the same worker when W divides lane groups x accumulation (checked in
    `prepare`), so no worker reads another's lanes.
    """

    def __init__(self, dataset: InfusedSequences, sampler: StepSampler) -> None:
        self.dataset = dataset
        self.sampler = sampler

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        indices = iter(self.sampler)
        for n in itertools.count():
            batch = list(itertools.islice(indices, self.sampler.micro))
            if n % workers == worker:
                yield default_collate([self.dataset[i] for i in batch])


class InfusionDataModule(L.LightningDataModule):
    def __init__(self, dataset: InfusedSequences, batch_size: int, micro_batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.num_workers = num_workers
        self.positions: dict[int, np.ndarray] = {}

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None:
            return self.loader(0)
        return self.loader(trainer.global_step, trainer.global_rank, trainer.world_size)

    def loader(self, start_step: int, rank: int = 0, world_size: int = 1) -> DataLoader:
        self.dataset.background.restore(self.positions)
        sampler = StepSampler(self.batch_size, self.micro_batch_size, rank, world_size, start_step)
        return DataLoader(
            StepBatches(self.dataset, sampler), batch_size=None, num_workers=self.num_workers, persistent_workers=False
        )

    def on_before_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict[str, torch.Tensor]:
        """Called on the batch training is about to use, never on a prefetched one."""
        for row in batch["position"].numpy():
            if row.size:
                self.positions[int(row[0])] = row.copy()
        return batch

    def _all_positions(self) -> dict[int, np.ndarray]:
        """Every rank's positions: each rank streams only its own lanes. Collective under DDP."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return dict(self.positions)
        gathered: list[dict[int, np.ndarray]] = [{} for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather_object(gathered, self.positions)
        return {key: row for part in gathered for key, row in part.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        positions = self._all_positions()
        if not positions:
            return {}
        return {"positions": torch.from_numpy(np.stack([positions[k] for k in sorted(positions)]))}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Rows of a checkpoint from before a counter was added are widened with that counter at 0."""
        self.positions = {int(row[0]): LanePosition.of(row).array() for row in state_dict["positions"].numpy()}

    def filter_stats(self) -> FilterStats:
        """Documents and tokens the mention filter kept and dropped, for the data trained on so far
        (the whole corpus when it is tokenized up front). Collective under DDP: call on every rank."""
        return self.dataset.background.filter_stats(self._all_positions())
