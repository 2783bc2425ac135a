"""Tiny corpora in FineWeb-Edu's layout, written by the tests themselves (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = (
    "the of and river mountain school teacher science history water energy light cell plant animal "
    "city people music art learn study because climate ocean island forest"
).split()
ROWS_PER_GROUP = 10
ROW_GROUPS = (3, 4, 2)  # 14 files do not divide a world size of 4 either: units are row groups


def documents(count: int, start: int = 0, seed: int = 0) -> list[str]:
    """Texts in FineWeb-Edu's spirit, each starting with a marker `docNNNN` that identifies it."""
    rng = np.random.default_rng([seed, start])
    return [f"doc{start + i:04d} " + " ".join(rng.choice(WORDS, rng.integers(15, 90))) + "." for i in range(count)]


def write_parquet(path: Path, texts: list[str | None], row_group_size: int = ROWS_PER_GROUP) -> None:
    """A parquet file with FineWeb-Edu's columns (a text may be null)."""
    n = len(texts)
    table = pa.table(
        {
            "text": pa.array(texts, pa.string()),
            "id": [f"<urn:uuid:{i}>" for i in range(n)],
            "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.org/{i}" for i in range(n)],
            "file_path": ["s3://commoncrawl/x.warc.gz"] * n,
            "language": ["en"] * n,
            "language_score": [0.97] * n,
            "token_count": [len(t.split()) if t else 0 for t in texts],
            "score": [3.1] * n,
            "int_score": [3] * n,
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def damage_page(path: Path, row_group: int) -> None:
    """Overwrites the header of the first data page of the row group's text column: the footer still reads."""
    chunk = pq.ParquetFile(path).metadata.row_group(row_group).column(0)
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset : chunk.data_page_offset + 32] = b"\xff" * 32
    path.write_bytes(bytes(data))


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t, "id": str(i)}) + "\n" for i, t in enumerate(texts)))


def local(make_cfg, files: str, *overrides: str):
    return make_cfg(
        "data=local",
        f"data.files={files}",
        "data.tokenizer.vocab_size=400",
        "data.tokenizer.train_docs=60",
        "data.lane_groups=2",
        "data.num_workers=0",
        *overrides,
    )
