"""Throughput of the whole data path on local parquet, in tokens/s on one core.

    python benchmarks/data_bench.py [--docs 12000] [--tokens 20000000] [--seq-len 2048]

Writes FineWeb-Edu-shaped parquet files of real English prose (see filter_bench.py), builds the run
through `prepare` (data=local, a 32k BPE, K facts filtered by subject, F=16), then times each stage
alone and the whole pipeline as one loader worker runs it: read, filter, tokenize, pack, splice, collate
(timed once every lane has started, as in a long run).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

os.environ.update(TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from filter_bench import english_documents  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from kinject import CONF_DIR  # noqa: E402
from kinject.data.tokenizer import encode_documents  # noqa: E402
from kinject.infusion.sequences import StepBatches, StepSampler  # noqa: E402
from kinject.run.experiment import prepare  # noqa: E402


def write_corpus(folder: Path, docs: list[str], files: int = 4, row_group_size: int = 1000) -> None:
    for number in range(files):
        part = docs[number::files]
        pq.write_table(
            pa.table({"text": part, "id": [str(i) for i in range(len(part))]}),
            folder / f"{number:03d}_00000.parquet",
            row_group_size=row_group_size,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=12000)
    parser.add_argument("--tokens", type=int, default=20_000_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--facts", type=int, default=1000)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="kinject-bench-") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, folder: Path) -> None:
    write_corpus(folder, english_documents(args.docs))
    mb = sum(p.stat().st_size for p in folder.glob("*.parquet")) / 1e6
    batch = 16
    steps = args.tokens // (batch * args.seq_len) + 1
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "data=local",
                f"data.files={folder}/*.parquet",
                f"data.seq_len={args.seq_len}",
                f"data.batch_size={batch}",
                f"data.micro_batch_size={batch}",
                "data.num_workers=0",
                "data.tokenizer.train_docs=3000",
                f"paths.cache_dir={folder / 'cache'}",
                f"tokens={steps * batch * args.seq_len}",
                f"knowledge.num_facts={args.facts}",
                "world.people=50",
                "infusion.freq=16",
                "eval.heldout_sequences=0",
                "eval.background_facts=0",
            ],
        )
    started = time.perf_counter()
    experiment = prepare(cfg)
    print(
        f"corpus: {args.docs} documents, {mb:.0f} MB parquet; prepare (incl. training the BPE): "
        f"{time.perf_counter() - started:.1f} s; one core"
    )
    dataset = experiment.datamodule.dataset
    lanes = dataset.background
    units = lanes.units

    start = time.perf_counter()
    texts = list(itertools.islice(lanes.corpus.texts(units), 4000))
    read = time.perf_counter() - start
    size = sum(len(t.encode()) for t in texts) / 1e6
    start = time.perf_counter()
    kept = [t for t in texts if not lanes.mentions.mentions(t)]
    filtered = time.perf_counter() - start
    start = time.perf_counter()
    tokens = sum(map(len, encode_documents(experiment.tokenizer, kept)))
    tokenized = time.perf_counter() - start
    print("| stage | MB/s | tokens/s |")
    print("| --- | --- | --- |")
    for stage, seconds in (("read parquet", read), (f"filter ({args.facts} facts)", filtered), ("tokenize", tokenized)):
        print(f"| {stage} | {size / seconds:.1f} | {tokens / seconds:,.0f} |")

    batches = iter(StepBatches(dataset, StepSampler(batch, batch, 0, 1, 0)))
    for _ in range(lanes.groups):
        next(batches)
    produced = 0
    start = time.perf_counter()
    while produced < args.tokens:
        produced += next(batches)["input_ids"].numel()
    elapsed = time.perf_counter() - start
    stage = f"whole pipeline ({lanes.lanes} lanes, seq {args.seq_len}, F=16)"
    print(f"| {stage} | {size / tokens * produced / elapsed:.1f} | {produced / elapsed:,.0f} |")


if __name__ == "__main__":
    main()
