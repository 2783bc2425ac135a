"""A real background corpus (FineWeb-Edu or local files) as units of documents, read in a seeded order.

Files are cut into units: a parquet row group, or a fixed-size byte block of a JSON-lines or text
file (a block owns the lines that start in it). Units are read in an endless sequence made of one
seeded permutation per pass; HF's streaming `.shuffle()` is never used, since it breaks resume.

(`kinject.data.background` deals them to lanes.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from kinject.errors import ConfigError
from kinject.network import unreachable

SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}
ROWS = 16  # documents read and tokenized at a time: bounds a lane's memory, not its data


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
    from huggingface_hub.constants import ENDPOINT

    reason = f"{offline[0]} is set" if offline else unreachable(ENDPOINT, timeout)
    if reason:
        folder = _hub_folder(name)
        raise ConfigError(
            "data.source",
            f"network access to the Hub for data=fineweb_edu ({repo}, {name})",
            reason,
            hint=f"Without network, download a copy elsewhere (hf download {repo} --repo-type dataset --include "
            f"'{folder}/*' --local-dir DIR), then run with data=local data.files='DIR/{folder}/**/*.parquet'",
        )


def _hub_folder(name: str) -> str:
    """Where a FineWeb-Edu config's files lie in its repository (sample-10BT: sample/10BT)."""
    if name == "default":
        return "data"
    return name.replace("-", "/", 1) if name.startswith("sample-") else f"data/{name}"


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
            try:
                parquet = self._parquet(path)
            except (pa.ArrowException, OSError) as error:
                raise ConfigError(path, "a parquet file whose footer and schema can be read", hint=str(error)) from None
            schema = parquet.schema_arrow
            column = schema.field(self.text_column).type if self.text_column in schema.names else None
            if column is None or not (pa.types.is_string(column) or pa.types.is_large_string(column)):
                raise ConfigError(
                    path,
                    f"a string column '{self.text_column}' (FineWeb-Edu's text)",
                    schema.names,
                    hint="set data.text_column",
                )
            meta = parquet.metadata
            return [Unit(path, kind, g) for g in range(meta.num_row_groups) if meta.row_group(g).num_rows]
        fs, inner = fsspec.core.url_to_fs(path)
        blocks = -(-fs.size(inner) // self.block_bytes)
        units = [Unit(path, kind, b) for b in range(blocks)]
        return units

    def check(self) -> None:
        """Parses every line of every JSON-lines file once, as training will read it, so that a malformed line
        stops the run before training with its file and line, even in a unit that is never trained on."""
        for path in dict.fromkeys(u.path for u in self.units if u.kind == "jsonl"):
            with fsspec.open(path, "rb") as file:
                offset = 0
                for number, line in enumerate(file, 1):
                    if line.strip():
                        self._record(f"{path}:{number} (line at byte {offset})", line)
                    offset += len(line)

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
        return self._record(f"{unit.path} (line at byte {offset})", line)

    def _record(self, where: str, line: bytes) -> str:
        """The document of one JSON line (UTF-8, a BOM allowed)."""
        try:
            record = json.loads(line.removeprefix(b"\xef\xbb\xbf"))
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get(self.text_column), str):
            expected = f"a JSON object with a string '{self.text_column}' field (UTF-8)"
            raise ConfigError(where, expected, line[:80].decode(errors="replace"))
        return record[self.text_column]

    def texts(self, units: Iterable[Unit]) -> Iterator[str]:
        for unit in units:
            for _, texts in self.documents(unit):
                yield from texts
