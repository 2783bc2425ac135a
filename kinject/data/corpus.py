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
COMPRESSED = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\xfd7zXZ": "xz"}
READABLE = "data that can be read"
REPLACE = "replace the file, or leave it out of data.files"


class UnreadableData(OSError):
    """A corpus file that fails where it is read (its pages or lines, past the checks made before training),
    named with its row group or byte block. Built from the message alone, so that the error a loader worker
    raises comes back from it as itself (torch re-raises it from its traceback text, whose last line is kept)."""

    def __init__(self, message: str, where: str = "", detail: str = "") -> None:
        last = (message.strip().splitlines() or [""])[-1]
        name = f"{type(self).__module__}.{type(self).__qualname__}: "
        super().__init__(last.split(name, 1)[1] if name in last else message)
        self.where, self.detail = where, detail

    def config_error(self) -> ConfigError:
        """The same error before training, where bad input stops the run as a ConfigError."""
        return ConfigError(self.where, READABLE, hint=self.detail)


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
        self.textless: list[str] = []  # files known to hold no text (their documents are all null or blank)
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
                expected = f"a string column '{self.text_column}' (FineWeb-Edu's text)"
                if column is None:
                    raise ConfigError(path, expected, schema.names, hint="set data.text_column")
                got = f"column '{self.text_column}' of type {column}"
                raise ConfigError(path, expected, got, hint="set data.text_column to the column that holds the text")
            meta = parquet.metadata
            groups = [g for g in range(meta.num_row_groups) if meta.row_group(g).num_rows]
            if groups and not any(
                self._may_hold_text(meta.row_group(g), schema.get_field_index(self.text_column)) for g in groups
            ):
                self.textless.append(path)
            return [Unit(path, kind, g) for g in groups]
        fs, inner = fsspec.core.url_to_fs(path)
        blocks = -(-fs.size(inner) // self.block_bytes)
        units = [Unit(path, kind, b) for b in range(blocks)]
        return units

    @staticmethod
    def _may_hold_text(group: pq.RowGroupMetaData, column: int) -> bool:
        """False when the row group's statistics show that its texts are all null or all empty strings."""
        stats = group.column(column).statistics
        if stats is None:
            return True
        if stats.has_null_count and stats.null_count >= group.num_rows:
            return False
        return not (stats.has_min_max and stats.max == "")

    def check(self) -> None:
        """Before training: parses every line of every JSON-lines file once, as training will read it, so that a
        malformed line stops the run with its file and line, even in a unit that is never trained on; and refuses
        a corpus with no text (parquet row groups whose statistics show only null or empty texts, JSON lines with
        only empty texts, text files of blank lines)."""
        kinds = {u.path: u.kind for u in self.units if u.kind != "parquet"}
        for path, kind in kinds.items():
            with fsspec.open(path, "rb") as file:
                start = file.read(8)
                file.seek(0)
                packed = next((name for magic, name in COMPRESSED.items() if start.startswith(magic)), None)
                if packed:
                    raise ConfigError(
                        path,
                        "plain UTF-8 text (JSON lines or a document per line)",
                        f"{packed}-compressed data",
                        hint="decompress it first",
                    )
                if self._texts_in(path, kind, file) == 0:
                    self.textless.append(path)
        if len(self.textless) == len({u.path for u in self.units}):
            raise ConfigError(
                "data.files",
                "documents with text",
                self.textless[:5] + ([f"... {len(self.textless) - 5} more"] if len(self.textless) > 5 else []),
                hint=f"every document of these files is null, empty or blank (data.text_column={self.text_column})",
            )

    def _texts_in(self, path: str, kind: str, file: Iterable[bytes]) -> int:
        """Documents with text in a JSON-lines file (every line parsed), or 1 for a text file with any."""
        offset, count = 0, 0
        for number, line in enumerate(file, 1):
            if line.strip():
                if kind == "text":
                    return 1
                count += bool(self._record(f"{path}:{number} (line at byte {offset})", line).strip())
            offset += len(line)
        return count

    @staticmethod
    def _parquet(path: str) -> pq.ParquetFile:
        fs, inner = fsspec.core.url_to_fs(path)
        return pq.ParquetFile(inner, filesystem=fs)

    def documents(self, unit: Unit, start: int = 0) -> Iterator[tuple[int, list[str]]]:
        """The unit's documents from row `start` on, in batches: (row of the first, texts; a null text is "").
        A read error names the file and the row group or byte block."""
        read = self._parquet_documents if unit.kind == "parquet" else self._line_documents
        try:
            yield from read(unit, start)
        except (pa.ArrowException, OSError) as error:
            if unit.kind == "parquet":
                where = f"{unit.path}, row group {unit.part}"
            else:
                where = f"{unit.path}, bytes {unit.part * self.block_bytes} to {(unit.part + 1) * self.block_bytes}"
            cause = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()).rstrip(".")
            detail = f"{type(error).__name__}: {cause}. {REPLACE}"
            raise UnreadableData(str(ConfigError(where, READABLE, hint=detail)), where, detail) from error

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
        except UnicodeDecodeError as error:
            bad = line[max(0, error.start - 20) : error.start + 8]
            raise ConfigError(
                where, "UTF-8 text", bad, hint="convert the file, e.g. iconv -f latin1 -t utf-8"
            ) from None
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get(self.text_column), str):
            expected = f"a JSON object with a string '{self.text_column}' field (UTF-8)"
            raise ConfigError(where, expected, line[:80].decode(errors="replace"))
        return record[self.text_column]

    def texts(self, units: Iterable[Unit]) -> Iterator[str]:
        """The units' documents with text (null and blank ones are left out)."""
        for unit in units:
            for _, texts in self.documents(unit):
                yield from (text for text in texts if text.strip())
