"""The training stream: background text with templated facts spliced in, as fixed-length sequences.

Sequence i of the run is a pure function of (config, seed, i): the facts the schedule puts there
(each as its own document), then the rest of the i-th background chunk. The background chunk for
a given i is the same at every F, so runs that differ only in F see the same background text in
the same order. A run reads sequences by global index from its optimizer step on, which makes
resume exact and the data per step the same for any number of devices.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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


class BackgroundStream:
    """Documents read as an endless stream; epoch e holds every document once, in a seeded order."""

    def __init__(self, documents: list[np.ndarray], seed: int) -> None:
        if not documents:
            raise ValueError("the background corpus is empty")
        self.documents = documents
        self.seed = seed
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


class InfusedSequences(Dataset):
    """Training sequence i: the facts scheduled there, then background chunk i fills the rest."""

    def __init__(
        self,
        background: BackgroundStream,
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
        chunk = self.background.tokens(index * self.seq_len + used, self.seq_len - used)
        tokens = np.concatenate([*injected, chunk]) if injected else chunk
        return {
            "input_ids": torch.from_numpy(tokens.astype(np.int64)),
            "index": torch.tensor(index),
            "injected": torch.tensor(used),
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


class InfusionDataModule(L.LightningDataModule):
    def __init__(self, dataset: InfusedSequences, batch_size: int, micro_batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.num_workers = num_workers

    def sampler(self, start_step: int) -> StepSampler:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return StepSampler(self.batch_size, self.micro_batch_size, rank, world, start_step)

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        return self.loader(start)

    def loader(self, start_step: int) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=self.micro_batch_size,
            sampler=self.sampler(start_step),
            num_workers=self.num_workers,
            persistent_workers=False,
        )
