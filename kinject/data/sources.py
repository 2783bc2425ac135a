"""Where the background corpus comes from, registered by name (`data.source`).

Each source returns the tokenizer, the background stream (chunk i of the run, the same at every F),
the held-out documents and, when the corpus teaches facts of its own (the synthetic world), that
world, so the background suite can measure forgetting. A new source is one function here plus a
`conf/data/NAME.yaml` with `source: NAME`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from kinject.budget import Budget
from kinject.data import tokenizer as tokenizers
from kinject.data.background import Background, BackgroundStream, LaneStream
from kinject.data.corpus import Corpus, Unit, UnreadableData, hub_files
from kinject.data.filtering import FilterStats, MentionFilter
from kinject.data.tokenizer import encode_documents
from kinject.errors import ConfigError
from kinject.files import expand
from kinject.knowledge.world import World
from kinject.registry import Registry

log = logging.getLogger("kinject")


@dataclass
class PreparedBackground:
    tokenizer: Any
    stream: Background
    heldout_documents: Iterable[str]
    world: World | None = None  # the world whose facts the corpus teaches, if any


BackgroundSource = Callable[[DictConfig, Callable[[], World], MentionFilter, Budget], PreparedBackground]
BACKGROUND_SOURCES: Registry[BackgroundSource] = Registry("data.source")


@BACKGROUND_SOURCES.register("synthetic")
def synthetic(
    cfg: DictConfig, world: Callable[[], World], mentions: MentionFilter, budget: Budget
) -> PreparedBackground:
    """The embedded world's documents, tokenized once (the filter has nothing to drop there)."""
    documents, heldout = world().documents()
    tokenizer = tokenizers.build(cfg.data.tokenizer, documents, cfg.paths.cache_dir)
    encoded = encode_documents(tokenizer, documents)
    dropped = [mentions.mentions(d) for d in documents]
    kept = [doc for doc, drop in zip(encoded, dropped) if not drop]
    stats = FilterStats(
        len(documents), sum(map(len, kept)), sum(dropped), sum(len(doc) for doc, drop in zip(encoded, dropped) if drop)
    )
    log.info(
        "filter (%s) dropped %d of %d background documents (%d tokens)",
        mentions.mode,
        stats.dropped_documents,
        stats.documents,
        stats.dropped_tokens,
    )
    stream = BackgroundStream(kept, seed=int(cfg.seed), seq_len=budget.seq_len, filtered=stats)
    return PreparedBackground(tokenizer, stream, [d for d in heldout if not mentions.mentions(d)], world())


@BACKGROUND_SOURCES.register("local")
def local(cfg: DictConfig, world: Callable[[], World], mentions: MentionFilter, budget: Budget) -> PreparedBackground:
    """Parquet, JSON-lines or text files on disk (a downloaded FineWeb-Edu, or any corpus)."""
    return _streamed(cfg, expand(cfg.data.files, "data.files"), mentions, budget)


@BACKGROUND_SOURCES.register("fineweb_edu")
def fineweb_edu(
    cfg: DictConfig, world: Callable[[], World], mentions: MentionFilter, budget: Budget
) -> PreparedBackground:
    """FineWeb-Edu read from the Hub, row group by row group."""
    return _streamed(cfg, hub_files(cfg.data.repo, cfg.data.name), mentions, budget)


def _streamed(cfg: DictConfig, files: list[str], mentions: MentionFilter, budget: Budget) -> PreparedBackground:
    """Files as lanes; the last `heldout_units` units (in file order) are held out."""
    data = cfg.data
    corpus = Corpus(files, data.text_column, int(data.block_bytes))
    corpus.check()
    held = data.heldout_units
    if not isinstance(held, int) or not 0 <= held < len(corpus.units):
        raise ConfigError(
            "data.heldout_units",
            f"0 to {len(corpus.units) - 1}: the corpus has {len(corpus.units)} "
            f"units (parquet row groups, or blocks of data.block_bytes={data.block_bytes} bytes of "
            "JSON-lines and text files)",
            held,
            hint="with small files, lower data.block_bytes so "
            "that some units are left to train on, or set data.heldout_units=0",
        )
    train, heldout = corpus.units[: len(corpus.units) - held], corpus.units[len(corpus.units) - held :]
    sample = itertools.islice(corpus.texts(train), int(data.tokenizer.train_docs))
    with _before_training():
        tokenizer = tokenizers.build(data.tokenizer, sample, cfg.paths.cache_dir)
    groups = int(data.lane_groups)
    workers = int(data.num_workers)
    if workers > 1 and (groups * budget.accumulation) % workers:
        raise ConfigError(
            "data.num_workers",
            f"a divisor of data.lane_groups x gradient accumulation "
            f"({groups} x {budget.accumulation}), so that each lane is read by one worker",
            workers,
        )
    lanes = LaneStream(corpus, train, tokenizer, mentions, budget.seq_len, budget.batch_size, groups, int(cfg.seed))
    return PreparedBackground(tokenizer, lanes, _heldout(corpus, heldout, mentions))


def _heldout(corpus: Corpus, units: list[Unit], mentions: MentionFilter) -> Iterator[str]:
    """The held-out documents, read while the run is prepared (before training)."""
    with _before_training():
        yield from (text for text in corpus.texts(units) if not mentions.mentions(text))


@contextlib.contextmanager
def _before_training() -> Iterator[None]:
    """A file that cannot be read while the run is prepared stops it as bad input, like the checks."""
    try:
        yield
    except UnreadableData as error:
        raise error.config_error() from None
