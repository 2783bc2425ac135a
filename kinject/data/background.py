"""The background stream: chunk i of the run, the same at every F.

Chunk i is seq_len tokens, or, given the background length of every sequence of the run
(`infusion.budget=fixed_background`: seq_len minus the injected tokens), that many tokens
continuing where the previous chunk of the same stream ended, so nothing is dropped and the
background read is the same at every F.

Two implementations: `BackgroundStream` over documents held in memory (the embedded world,
tokenized once), and `LaneStream` over a real corpus (FineWeb-Edu or local files) streamed as
packed lanes and resumed exactly. The sequence of units is dealt to `lane_groups x batch_size`
lanes, each its own stream of filtered, tokenized, EOS-separated documents packed into `seq_len`
chunks. Training sequence s*B + j takes chunk s // G of lane (s % G)*B + j, so a rank reads only the
lanes of its own batch positions and the data of every step is the same on any number of devices
and loader workers. A lane's position after each chunk (unit, row, token, filter counts) travels
with the batch into the checkpoint; without one, a lane is replayed from its start, so any chunk
can be recomputed.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import astuple, dataclass, replace
from typing import Protocol

import numpy as np

from kinject.data.corpus import Corpus, Unit
from kinject.data.filtering import FilterStats, MentionFilter
from kinject.data.tokenizer import encode_documents


class Background(Protocol):
    """Background chunk i, the same at every F."""

    def chunk(self, index: int, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The chunk (seq_len tokens, or lengths[index] continuing the stream; past the end of `lengths`,
        seq_len) and the position that resumes after it: an int64 vector whose first entry names the stream
        it belongs to, empty for a random-access background."""

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
        self._starts: tuple[np.ndarray | None, np.ndarray] = (None, np.zeros(1, dtype=np.int64))

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
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def chunk(self, index: int, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        position = np.zeros(0, dtype=np.int64)
        if lengths is None:
            return self.tokens(index * self.seq_len, self.seq_len), position
        if self._starts[0] is not lengths:
            self._starts = (lengths, np.concatenate([[0], np.cumsum(lengths)]))
        starts, last = self._starts[1], len(lengths)
        start = int(starts[min(index, last)]) + max(0, index - last) * self.seq_len
        return self.tokens(start, int(lengths[index]) if index < last else self.seq_len), position

    def restore(self, positions: dict[int, np.ndarray]) -> None:
        pass

    def filter_stats(self, positions: dict[int, np.ndarray]) -> FilterStats:
        return self.filtered


@dataclass
class LanePosition:
    """Where a lane resumes (next chunk; unit, row and token to continue from) and what its filter counted."""

    lane: int
    chunk: int = 0
    unit: int = 0
    row: int = 0
    token: int = 0
    documents: int = 0
    tokens: int = 0
    dropped_documents: int = 0
    dropped_tokens: int = 0
    empty_documents: int = 0  # last: a checkpoint written before it existed resumes with 0

    def array(self) -> np.ndarray:
        return np.array(astuple(self), dtype=np.int64)

    @classmethod
    def of(cls, row: np.ndarray) -> LanePosition:
        return cls(*(int(x) for x in row))


@functools.lru_cache(maxsize=8)
def _pass_order(seed: int, units: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(units)


class LaneStream:
    """The background as lanes of packed chunks (see the module docstring); a `Background`."""

    def __init__(
        self,
        corpus: Corpus,
        units: list[Unit],
        tokenizer,
        mentions: MentionFilter,
        seq_len: int,
        batch_size: int,
        groups: int,
        seed: int,
    ) -> None:
        self.corpus = corpus
        self.units = units
        self.tokenizer = tokenizer
        self.mentions = mentions
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.groups = groups
        self.lanes = groups * batch_size
        self.seed = seed
        self._readers: dict[int, _Reader] = {}
        self._saved: dict[int, LanePosition] = {}

    def locate(self, index: int) -> tuple[int, int]:
        """The lane and the lane's chunk number that training sequence `index` takes."""
        step, j = divmod(index, self.batch_size)
        return (step % self.groups) * self.batch_size + j, step // self.groups

    def index(self, lane: int, chunk: int) -> int:
        """The training sequence that takes the lane's chunk number `chunk` (the inverse of locate)."""
        g, j = divmod(lane, self.batch_size)
        return (chunk * self.groups + g) * self.batch_size + j

    def unit(self, lane: int, k: int) -> Unit:
        """The lane's k-th unit: entry lane + k*N of the endless sequence of passes."""
        epoch, i = divmod(lane + k * self.lanes, len(self.units))
        return self.units[_pass_order(self.seed, len(self.units), epoch)[i]]

    def documents(self, lane: int, k: int, row: int) -> Iterator[tuple[int, int, np.ndarray | None, bool]]:
        """The lane's documents from its k-th unit and that row on: (k, row, [EOS]+tokens, dropped); a null or
        blank text gives None. Refuses to read on where a lane finds nothing to train on for longer than
        `barren_units` units in a row (every text empty or dropped by the filter), which would never end."""
        barren = 0
        while True:
            found = False
            for first, texts in self.corpus.documents(self.unit(lane, k), row):
                kept = [t for t in texts if t.strip()]
                encoded = iter(encode_documents(self.tokenizer, kept))
                for i, text in enumerate(texts):
                    doc = next(encoded) if text.strip() else None
                    dropped = doc is not None and self.mentions.mentions(text)
                    found = found or (doc is not None and not dropped)
                    yield k, first + i, doc, dropped
            barren = 0 if found else barren + 1
            if barren > self.barren_units:
                raise ValueError(
                    f"the background corpus: expected documents to train on, got none in the {barren} units that "
                    f"lane {lane} read in a row (their texts were empty, or mentioned an evaluated fact: "
                    f"data.filter={self.mentions.mode}). Check data.files and data.text_column, or the subjects of "
                    "the knowledge set (a subject that is a common word drops most documents)"
                )
            k, row = k + 1, 0

    @property
    def barren_units(self) -> int:
        """Units read in a row without a document to train on before the lane gives up: two passes' worth, at
        least 32, so that a sparse but usable corpus is not refused by chance."""
        return max(2 * len(self.units), 32)

    def chunk(self, index: int, lengths: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        def length(i: int) -> int:
            return self.seq_len if lengths is None or i >= len(lengths) else int(lengths[i])

        lane, chunk = self.locate(index)
        reader = self._readers.get(lane)
        if reader is None or reader.position.chunk > chunk:
            saved = self._saved.get(lane)
            start = saved if saved is not None and saved.chunk <= chunk else LanePosition(lane)
            reader = self._readers[lane] = _Reader(self, replace(start))
        while reader.position.chunk < chunk:
            reader.next_chunk(length(self.index(lane, reader.position.chunk)))
        return reader.next_chunk(length(index)), reader.position.array()

    def restore(self, positions: dict[int, np.ndarray]) -> None:
        self._saved = {lane: LanePosition.of(row) for lane, row in positions.items()}

    def filter_stats(self, positions: dict[int, np.ndarray]) -> FilterStats:
        total = FilterStats()
        for row in positions.values():
            p = LanePosition.of(row)
            total += FilterStats(p.documents, p.tokens, p.dropped_documents, p.dropped_tokens, p.empty_documents)
        return total


class _Reader:
    """One lane read forward from a position."""

    def __init__(self, stream: LaneStream, position: LanePosition) -> None:
        self.position = position
        self._documents = stream.documents(position.lane, position.unit, position.row)
        self._doc = np.zeros(0, dtype=np.int32)
        self._offset = 0
        if position.token:
            doc = next(self._documents)[2]
            assert doc is not None, "a lane resumes inside a document with text"
            self._doc, self._offset = doc, position.token

    def next_chunk(self, need: int) -> np.ndarray:
        parts = []
        while need:
            if self._offset == len(self._doc):
                self._next_document()
            part = self._doc[self._offset : self._offset + need]
            parts.append(part)
            self._offset += len(part)
            need -= len(part)
        self.position.chunk += 1
        self.position.token = self._offset
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def _next_document(self) -> None:
        """Moves to the next kept document, counting the empty and dropped ones on the way."""
        p = self.position
        while True:
            p.unit, p.row, doc, dropped = next(self._documents)
            p.documents += 1
            if doc is None:
                p.empty_documents += 1
            elif not dropped:
                p.tokens += len(doc)
                self._doc, self._offset = doc, 0
                return
            else:
                p.dropped_documents += 1
                p.dropped_tokens += len(doc)
