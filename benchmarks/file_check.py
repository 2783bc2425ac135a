"""What checking every JSON-lines line before training costs: the pre-check pass (`Corpus.check`) in MB/s; and
what reading every parquet row group before training would cost (not done: a damaged data page is named with its
file and row group when training reaches it; only footers and statistics are read before).

python benchmarks/file_check.py [--mb 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from filter_bench import english_documents

from kinject.data.corpus import Corpus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.jsonl"
        docs = [json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(english_documents(2000))]
        with path.open("w") as out:
            written = 0
            while written < args.mb * 2**20:
                for line in docs:
                    written += out.write(line)
        size = path.stat().st_size / 2**20
        corpus = Corpus([str(path)], "text", 64 * 2**20)
        started = time.perf_counter()
        corpus.check()
        elapsed = time.perf_counter() - started
        texts = [json.loads(line)["text"] for line in path.open()]
        parquet = Path(folder) / "corpus.parquet"
        pq.write_table(pa.table({"text": texts}), parquet, row_group_size=len(docs))  # FineWeb-Edu's snappy
        parquet_size = parquet.stat().st_size / 2**20
        started = time.perf_counter()
        Corpus([str(parquet)], "text", 1).check()  # the footer and statistics are read as units are listed
        footer = time.perf_counter() - started
        started = time.perf_counter()
        with pq.ParquetFile(parquet) as file:
            for group in range(file.metadata.num_row_groups):
                file.read_row_group(group, columns=["text"])
        read = time.perf_counter() - started
    print(
        f"checked {size:.0f} MB of JSON lines in {elapsed:.2f} s: {size / elapsed:.0f} MB/s "
        f"({size / elapsed * 3.6:.0f} GB an hour); parquet: footer and statistics in {footer * 1000:.0f} ms for "
        f"{parquet_size:.0f} MB, a full read of every row group would run at {parquet_size / read:.0f} MB/s "
        f"({parquet_size / read * 3.6:.0f} GB an hour)"
    )


if __name__ == "__main__":
    main()
