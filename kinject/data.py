"""The training stream: background text with templated facts spliced in, as fixed-length sequences.

Sequence i of the run is a pure function of (config, seed, i): the facts the schedule puts there
(each as its own document), then the rest of the i-th background chunk. The background chunk for
a given i is the same at every F, so runs that differ only in F see the same background text in
the same order. A run reads sequences by global index from its optimizer step on, which makes
resume exact and the data per step the same for any number of devices.

A background is either random access (the embedded world, tokenized once) or a set of streamed
lanes (`kinject.corpus`); a streamed one reports, with every chunk, the position that resumes
after it, and the data module keeps the positions of the batches training has consumed (not the
ones Lightning has prefetched) for the checkpoint.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Protocol, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, default_collate, get_worker_info

from kinject.filtering import FilterStats
from kinject.infusion import InfusionConfig, Schedule, render
from kinject.knowledge import KnowledgeSet


def encode_documents(tokenizer, texts: Sequence[str], batch: int = 1024) -> list[np.ndarray]:
    """Each text as [EOS] + tokens: EOS marks a document start, as in the evaluation prompts."""
    eos = tokenizer.eos_token_id
    out = []
    for i in range(0, len(texts), batch):
        encoded = tokenizer(list(texts[i : i + batch]), add_special_tokens=False)["input_ids"]
        out.extend(np.array([eos, *ids], dtype=np.int32) for ids in encoded)
    return out


class Background(Protocol):
    """Background chunk i (seq_len tokens), the same at every F."""

    def chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The chunk and the position that resumes after it: an int64 vector whose first entry names
        the stream it belongs to, empty for a random-access background."""

    def restore(self, positions: dict[int, np.ndarray]) -> None:
        """Positions saved with a checkpoint, where reading may start instead of from the beginning."""

    def filter_stats(self, positions: dict[int, np.ndarray]) -> FilterStats:
        """What the mention filter kept and dropped, up to the given positions where it streams."""


class BackgroundStream:
    """Documents read as an endless stream; epoch e holds every document once, in a seeded order."""

    def __init__(self, documents: list[np.ndarray], seed: int, seq_len: int, filtered: FilterStats) -> None:
        if not documents:
            raise ValueError("the background corpus is empty")
        self.documents = documents
        self.seed = seed
        self.seq_len = seq_len
        self.filtered = filtered
        self.epoch_tokens = int(sum(len(d) for d in documents))
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.documents))
            self._cache[epoch] = np.concatenate([self.documents[d] for d in order])
        return self._cache[epoch]

    def tokens(self, start: int, length: int) -> np.ndarray:
        parts = []
        while length > 0:
            epoch, offset = divmod(start, self.epoch_tokens)
            part = self._epoch(epoch)[offset : offset + length]
            parts.append(part)
            start += len(part)
            length -= len(part)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tokens(index * self.seq_len, self.seq_len), np.zeros(0, dtype=np.int64)

    def restore(self, positions: dict[int, np.ndarray]) -> None:
        pass

    def filter_stats(self, positions: dict[int, np.ndarray]) -> FilterStats:
        return self.filtered


class InfusedSequences(Dataset):
    """Training sequence i: the facts scheduled there, then the tail of background chunk i."""

    def __init__(
        self,
        background: Background,
        schedule: Schedule,
        knowledge: KnowledgeSet,
        infusion: InfusionConfig,
        tokenizer,
        seq_len: int,
    ) -> None:
        self.background = background
        self.schedule = schedule
        self.seq_len = seq_len
        self.variants = self._canonical_exposure(schedule.exposure, infusion)
        pairs = list(zip(schedule.fact.tolist(), self.variants.tolist()))
        distinct = sorted(set(pairs))
        texts = [render(knowledge, knowledge.facts[f], e, infusion) for f, e in distinct]
        self._text = dict(zip(distinct, encode_documents(tokenizer, texts)))
        self.exposure_tokens = np.array([len(self._text[p]) for p in pairs], dtype=np.int64)
        self.injected_tokens = int(self.exposure_tokens.sum())

    @staticmethod
    def _canonical_exposure(exposure: np.ndarray, infusion: InfusionConfig) -> np.ndarray:
        """The first exposure number that renders to the same text, so each text is tokenized once."""
        if infusion.paraphrase == "duplicate":
            return exposure % 2 if infusion.format == "mixed" else np.zeros_like(exposure)
        return exposure

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        span = self.schedule.at(index)
        facts = self.schedule.fact[span].tolist()
        variants = self.variants[span].tolist()
        injected = [self._text[p] for p in zip(facts, variants)]
        used = sum(len(t) for t in injected)
        chunk, position = self.background.chunk(index)
        tokens = np.concatenate([*injected, chunk[used:]]) if injected else chunk
        return {
            "input_ids": torch.from_numpy(tokens.astype(np.int64)),
            "index": torch.tensor(index),
            "injected": torch.tensor(used),
            "position": torch.from_numpy(position),
        }


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
        self.accumulation = batch_size // (micro_batch_size * world_size)

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
        return DataLoader(StepBatches(self.dataset, sampler), batch_size=None, num_workers=self.num_workers,
                          persistent_workers=False)

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
        self.positions = {int(row[0]): row for row in state_dict["positions"].numpy()}

    def filter_stats(self) -> FilterStats:
        """Documents and tokens the mention filter kept and dropped, for the data trained on so far
        (the whole corpus when it is tokenized up front). Collective under DDP: call on every rank."""
        return self.dataset.background.filter_stats(self._all_positions())
