"""A real background corpus (FineWeb-Edu or local files) streamed as packed lanes, resumable exactly.

Files are cut into units: a parquet row group, or a fixed-size byte block of a JSON-lines or text
file (a block owns the lines that start in it). Units are read in an endless sequence made of one
seeded permutation per pass; HF's streaming `.shuffle()` is never used, since it breaks resume.

The sequence is dealt to `lane_groups x batch_size` lanes, each its own stream of filtered,
tokenized, EOS-separated documents packed into `seq_len` chunks. Training sequence s*B + j takes
chunk s // G of lane (s % G)*B + j, so a rank reads only the lanes of its own batch positions and
the data of every step is the same on any number of devices and loader workers. A lane's position
after each chunk (unit, row, token, filter counts) travels with the batch into the checkpoint;
without one, a lane is replayed from its start, so any chunk can be recomputed.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import socket
from dataclasses import astuple, dataclass, replace
from typing import Iterable, Iterator, Sequence
from urllib.parse import urlparse

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kinject.data import encode_documents
from kinject.errors import ConfigError
from kinject.filtering import FilterStats, MentionFilter

SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}
ROWS = 16  # documents read and tokenized at a time: bounds a lane's memory, not its data


def expand(patterns: str | Sequence[str], key: str = "data.files") -> list[str]:
    """The files that paths or globs name, each pattern required to match something."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns or ())
    if not patterns:
        raise ConfigError(key, "a path or glob, or a list of them", patterns)
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(p for p in glob.glob(os.path.expanduser(str(pattern)), recursive=True) if os.path.isfile(p))
        if not matched:
            raise ConfigError(key, "paths or globs that match files", str(pattern), hint="no file matches it")
        files.extend(p for p in matched if p not in files)
    return files


def hub_files(repo: str, name: str) -> list[str]:
    """The data files of a Hub dataset config, as hf:// URLs that pyarrow reads row group by row group."""
    _check_hub(repo, name)
    import datasets  # a second to import: only this path needs it

    builder = datasets.load_dataset_builder(repo, name)
    return sorted(str(f) for files in builder.config.data_files.values() for f in files)


def _check_hub(repo: str, name: str, timeout: float = 5.0) -> None:
    """Fails in seconds, not after minutes of retries, when the Hub cannot be reached."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    offline = [v for v in flags if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]
    reason = f"{offline[0]} is set" if offline else _unreachable(timeout)
    if reason:
        folder = _hub_folder(name)
        raise ConfigError(
            "data.source", f"network access to the Hub for data=fineweb_edu ({repo}, {name})", reason,
            hint=f"Without network, download a copy elsewhere (hf download {repo} --repo-type dataset --include "
            f"'{folder}/*' --local-dir DIR), then run with data=local data.files='DIR/{folder}/**/*.parquet'",
        )


def _hub_folder(name: str) -> str:
    """Where a FineWeb-Edu config's files lie in its repository (sample-10BT: sample/10BT)."""
    if name == "default":
        return "data"
    return name.replace("-", "/", 1) if name.startswith("sample-") else f"data/{name}"


def _unreachable(timeout: float) -> str | None:
    from huggingface_hub.constants import ENDPOINT

    url = urlparse(ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as error:
        return f"{url.hostname}: {error}"
    return None


@dataclass(frozen=True)
class Unit:
    """What one lane reads at a time: a parquet row group, or a byte block of a line-based file."""

    path: str
    kind: str
    part: int


class Corpus:
    """Documents of parquet, JSON-lines or text files (local, or any fsspec URL such as hf://)."""

    def __init__(self, files: Sequence[str], text_column: str, block_bytes: int) -> None:
        if block_bytes < 1:
            raise ConfigError("data.block_bytes", "a positive number of bytes", block_bytes)
        self.text_column = text_column
        self.block_bytes = block_bytes
        self.units = [unit for path in files for unit in self._units(path)]
        if not self.units:
            raise ConfigError("data.files", "files with at least one document", list(files))

    def _units(self, path: str) -> list[Unit]:
        suffix = os.path.splitext(urlparse(path).path if "://" in path else path)[1].lower()
        if suffix not in SUFFIXES:
            raise ConfigError("data.files", f"files ending in one of {sorted(SUFFIXES)}", path)
        kind = SUFFIXES[suffix]
        if kind == "parquet":
            parquet = self._parquet(path)
            schema = parquet.schema_arrow
            column = schema.field(self.text_column).type if self.text_column in schema.names else None
            if column is None or not (pa.types.is_string(column) or pa.types.is_large_string(column)):
                raise ConfigError(path, f"a string column '{self.text_column}' (FineWeb-Edu's text)", schema.names,
                                  hint="set data.text_column")
            meta = parquet.metadata
            return [Unit(path, kind, g) for g in range(meta.num_row_groups) if meta.row_group(g).num_rows]
        fs, inner = fsspec.core.url_to_fs(path)
        blocks = -(-fs.size(inner) // self.block_bytes)
        units = [Unit(path, kind, b) for b in range(blocks)]
        if units:
            next(self.documents(units[0]), None)  # a malformed file fails here, not in a loader worker
        return units

    @staticmethod
    def _parquet(path: str) -> pq.ParquetFile:
        fs, inner = fsspec.core.url_to_fs(path)
        return pq.ParquetFile(inner, filesystem=fs)

    def documents(self, unit: Unit, start: int = 0) -> Iterator[tuple[int, list[str]]]:
        """The unit's documents from row `start` on, in batches: (row of the first, texts)."""
        read = self._parquet_documents if unit.kind == "parquet" else self._line_documents
        return read(unit, start)

    def _parquet_documents(self, unit: Unit, start: int) -> Iterator[tuple[int, list[str]]]:
        row = 0
        batches = self._parquet(unit.path).iter_batches(ROWS, row_groups=[unit.part], columns=[self.text_column])
        for batch in batches:
            if row + batch.num_rows > start:
                skip = max(0, start - row)
                yield row + skip, batch.column(0).fill_null("").to_pylist()[skip:]
            row += batch.num_rows

    def _line_documents(self, unit: Unit, start: int) -> Iterator[tuple[int, list[str]]]:
        texts: list[str] = []
        first = start
        for row, (offset, line) in enumerate(self._lines(unit)):
            if row < start:
                continue
            texts.append(self._text(unit, offset, line))
            if len(texts) == ROWS:
                yield first, texts
                first, texts = row + 1, []
        if texts:
            yield first, texts

    def _lines(self, unit: Unit) -> Iterator[tuple[int, bytes]]:
        """Non-blank lines that start in the unit's byte block, with their offsets."""
        begin, end = unit.part * self.block_bytes, (unit.part + 1) * self.block_bytes
        with fsspec.open(unit.path, "rb") as file:
            if begin:
                file.seek(begin - 1)
                file.readline()
            offset = file.tell()
            while offset < end:
                line = file.readline()
                if not line:
                    return
                if line.strip():
                    yield offset, line
                offset += len(line)

    def _text(self, unit: Unit, offset: int, line: bytes) -> str:
        if unit.kind == "text":
            return line.decode("utf-8", errors="replace").rstrip("\r\n")
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get(self.text_column), str):
            expected = f"a JSON object with a string '{self.text_column}' field"
            raise ConfigError(f"{unit.path} (line at byte {offset})", expected, line[:80].decode(errors="replace"))
        return record[self.text_column]

    def texts(self, units: Iterable[Unit]) -> Iterator[str]:
        for unit in units:
            for _, texts in self.documents(unit):
                yield from texts


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

    def __init__(self, corpus: Corpus, units: list[Unit], tokenizer, mentions: MentionFilter, seq_len: int,
                 batch_size: int, groups: int, seed: int) -> None:
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

    def unit(self, lane: int, k: int) -> Unit:
        """The lane's k-th unit: entry lane + k*N of the endless sequence of passes."""
        epoch, i = divmod(lane + k * self.lanes, len(self.units))
        return self.units[_pass_order(self.seed, len(self.units), epoch)[i]]

    def documents(self, lane: int, k: int, row: int) -> Iterator[tuple[int, int, np.ndarray, bool]]:
        """The lane's documents from its k-th unit and that row on: (k, row, [EOS]+tokens, dropped)."""
        while True:
            for first, texts in self.corpus.documents(self.unit(lane, k), row):
                for i, (text, doc) in enumerate(zip(texts, encode_documents(self.tokenizer, texts))):
                    yield k, first + i, doc, self.mentions.mentions(text)
            k, row = k + 1, 0

    def chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        lane, chunk = self.locate(index)
        reader = self._readers.get(lane)
        if reader is None or reader.position.chunk > chunk:
            saved = self._saved.get(lane)
            start = saved if saved is not None and saved.chunk <= chunk else LanePosition(lane)
            reader = self._readers[lane] = _Reader(self, replace(start))
        while reader.position.chunk < chunk:
            reader.next_chunk()
        return reader.next_chunk(), reader.position.array()

    def restore(self, positions: dict[int, np.ndarray]) -> None:
        self._saved = {lane: LanePosition.of(row) for lane, row in positions.items()}

    def filter_stats(self, positions: dict[int, np.ndarray]) -> FilterStats:
        total = FilterStats()
        for row in positions.values():
            p = LanePosition.of(row)
            total += FilterStats(p.documents, p.tokens, p.dropped_documents, p.dropped_tokens)
        return total


class _Reader:
    """One lane read forward from a position."""

    def __init__(self, stream: LaneStream, position: LanePosition) -> None:
        self.seq_len = stream.seq_len
        self.position = position
        self._documents = stream.documents(position.lane, position.unit, position.row)
        self._doc = np.zeros(0, dtype=np.int32)
        self._offset = 0
        if position.token:
            self._doc, self._offset = next(self._documents)[2], position.token

    def next_chunk(self) -> np.ndarray:
        parts, need = [], self.seq_len
        while need:
            if self._offset == len(self._doc):
                self._next_document()
            part = self._doc[self._offset : self._offset + need]
            parts.append(part)
            self._offset += len(part)
            need -= len(part)
        self.position.chunk += 1
        self.position.token = self._offset
        return np.concatenate(parts)

    def _next_document(self) -> None:
        """Moves to the next kept document, counting the dropped ones on the way."""
        p = self.position
        while True:
            p.unit, p.row, doc, dropped = next(self._documents)
            p.documents += 1
            if not dropped:
                p.tokens += len(doc)
                self._doc, self._offset = doc, 0
                return
            p.dropped_documents += 1
            p.dropped_tokens += len(doc)
