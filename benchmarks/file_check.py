"""What checking every JSON-lines line before training costs: the pre-check pass (`Corpus.check`) in MB/s.

python benchmarks/file_check.py [--mb 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

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
    print(
        f"checked {size:.0f} MB of JSON lines in {elapsed:.2f} s: {size / elapsed:.0f} MB/s "
        f"({size / elapsed * 3.6:.0f} GB an hour); parquet files cost one footer read each"
    )


if __name__ == "__main__":
    main()
