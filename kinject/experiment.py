"""From a resolved config to everything a run needs, with every check done before training starts."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from kinject import tokenizer as tokenizers
from kinject import wikidata
from kinject.corpus import Corpus, LaneStream, expand, hub_files
from kinject.data import Background, BackgroundStream, InfusedSequences, InfusionDataModule, encode_documents
from kinject.errors import ConfigError
from kinject.evaluation import Evaluator
from kinject.filtering import FilterStats, MentionFilter
from kinject.infusion import InfusionConfig, extraction_prompt, memorization_prompt, plan
from kinject.knowledge import KnowledgeSet, multiple_choice
from kinject.model import ModelSpec, resolve_vocab
from kinject.validation import validate
from kinject.world import World, WorldConfig

log = logging.getLogger("kinject")
DATA_SOURCES = ("synthetic", "local", "fineweb_edu")


@dataclass
class Budget:
    tokens: int
    seq_len: int
    batch_size: int
    micro_batch_size: int
    world_size: int

    @property
    def steps(self) -> int:
        return self.tokens // (self.batch_size * self.seq_len)

    @property
    def sequences(self) -> int:
        return self.steps * self.batch_size

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world_size)


@dataclass
class Experiment:
    tokenizer: Any
    knowledge: KnowledgeSet
    infusion: InfusionConfig
    budget: Budget
    model: ModelSpec
    vocab_size: int
    datamodule: InfusionDataModule
    evaluator: Evaluator

    def summary(self) -> dict[str, Any]:
        """What every run logs about its infusion: F, K, injected tokens and their share of the budget."""
        dataset = self.datamodule.dataset
        exposures = len(dataset.exposure_tokens)
        return {
            "freq": self.infusion.freq,
            "format": self.infusion.format,
            "paraphrase": self.infusion.paraphrase,
            "num_facts": len(self.knowledge.facts),
            "exposures": exposures,
            "injected_tokens": dataset.injected_tokens,
            "injected_share": dataset.injected_tokens / (self.budget.sequences * self.budget.seq_len),
            "mean_fact_tokens": dataset.injected_tokens / exposures if exposures else 0.0,
        }


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, "a positive integer", value)
    return value


def world_size(trainer: DictConfig) -> int:
    devices = trainer.get("devices", 1)
    if devices in ("auto", -1):
        devices = max(1, torch.cuda.device_count()) if trainer.get("accelerator") != "cpu" else 1
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        devices = len(devices)
    return _positive_int(devices, "trainer.devices") * _positive_int(trainer.get("num_nodes", 1), "trainer.num_nodes")


def budget_of(cfg: DictConfig) -> Budget:
    budget = Budget(
        tokens=int(cfg.tokens),
        seq_len=int(cfg.data.seq_len),
        batch_size=int(cfg.data.batch_size),
        micro_batch_size=int(cfg.data.micro_batch_size),
        world_size=world_size(cfg.trainer),
    )
    if budget.batch_size % (budget.micro_batch_size * budget.world_size):
        raise ConfigError("data.batch_size", "a multiple of data.micro_batch_size x devices",
                          (budget.batch_size, budget.micro_batch_size, budget.world_size))
    if budget.steps < 1:
        raise ConfigError("tokens", f"at least one step of {budget.batch_size * budget.seq_len} tokens", budget.tokens)
    return budget


def _knowledge(cfg: DictConfig, world: World | None) -> KnowledgeSet:
    k = cfg.knowledge
    num_facts = int(k.num_facts)
    if k.source == "wikidata":
        include = list(k.include) if k.include is not None else None
        relations = OmegaConf.to_container(k.relations, resolve=True)
        return wikidata.load(k.files, relations, include, num_facts, int(k.seed))
    if k.source != "synthetic":
        raise ConfigError("knowledge.source", "'synthetic' or 'wikidata'", k.source)
    assert world is not None
    include = list(k.include) if k.include is not None else list(world.relations)
    unknown = sorted(set(include) - set(world.relations))
    if unknown or not include:
        raise ConfigError("knowledge.include", f"relation names among {sorted(world.relations)}", unknown or include)
    return world.knowledge(world.fresh_facts(num_facts, int(k.seed), include))


def _synthetic_background(cfg: DictConfig, world: World, mentions: MentionFilter,
                          seq_len: int) -> tuple[Any, Background, list[str]]:
    """The embedded world's documents, tokenized once (the filter has nothing to drop there)."""
    documents, heldout = world.documents()
    tokenizer = tokenizers.build(cfg.data.tokenizer, documents, cfg.paths.cache_dir)
    encoded = encode_documents(tokenizer, documents)
    dropped = [mentions.mentions(d) for d in documents]
    kept = [doc for doc, drop in zip(encoded, dropped) if not drop]
    stats = FilterStats(len(documents), sum(map(len, kept)), sum(dropped),
                        sum(len(doc) for doc, drop in zip(encoded, dropped) if drop))
    log.info("filter (%s) dropped %d of %d background documents (%d tokens)", mentions.mode,
             stats.dropped_documents, stats.documents, stats.dropped_tokens)
    background = BackgroundStream(kept, seed=int(cfg.seed), seq_len=seq_len, filtered=stats)
    return tokenizer, background, [d for d in heldout if not mentions.mentions(d)]


def _streamed_background(cfg: DictConfig, mentions: MentionFilter,
                         budget: Budget) -> tuple[Any, Background, Iterator[str]]:
    """FineWeb-Edu or local files as lanes; the last `heldout_units` units (in file order) are held out."""
    data = cfg.data
    files = expand(data.files) if data.source == "local" else hub_files(data.repo, data.name)
    corpus = Corpus(files, data.text_column, int(data.block_bytes))
    held = data.heldout_units
    if not isinstance(held, int) or not 0 <= held < len(corpus.units):
        raise ConfigError("data.heldout_units", f"0 to {len(corpus.units) - 1}: the corpus has {len(corpus.units)} "
                          "units (parquet row groups or byte blocks)", held)
    train, heldout = corpus.units[: len(corpus.units) - held], corpus.units[len(corpus.units) - held :]
    train_docs = int(data.tokenizer.train_docs)
    sample = itertools.islice(corpus.texts(train), train_docs)
    tokenizer = tokenizers.build(data.tokenizer, sample, cfg.paths.cache_dir)
    groups = int(data.lane_groups)
    workers = int(data.num_workers)
    if workers > 1 and (groups * budget.accumulation) % workers:
        raise ConfigError("data.num_workers", f"a divisor of data.lane_groups x gradient accumulation "
                          f"({groups} x {budget.accumulation}), so that each lane is read by one worker", workers)
    lanes = LaneStream(corpus, train, tokenizer, mentions, budget.seq_len, budget.batch_size, groups, int(cfg.seed))
    return tokenizer, lanes, (text for text in corpus.texts(heldout) if not mentions.mentions(text))


def prepare(cfg: DictConfig) -> Experiment:
    """Builds world, corpus, tokenizer, knowledge, schedule, data module and evaluator from config."""
    validate(cfg)
    budget = budget_of(cfg)
    infusion = InfusionConfig.from_config(cfg.infusion)
    spec = ModelSpec.from_config(cfg.model)
    source = cfg.data.source
    if source not in DATA_SOURCES:
        raise ConfigError("data.source", f"one of {DATA_SOURCES}", source)
    synthetic = "synthetic" in (source, cfg.knowledge.source)
    world = World(WorldConfig.from_config(OmegaConf.to_container(cfg.world, resolve=True))) if synthetic else None
    knowledge = _knowledge(cfg, world)
    mentions = MentionFilter(knowledge.facts, cfg.data.filter)
    if source == "synthetic":
        assert world is not None
        tokenizer, background, heldout_documents = _synthetic_background(cfg, world, mentions, budget.seq_len)
    else:
        tokenizer, background, heldout_documents = _streamed_background(cfg, mentions, budget)
    vocab_size = resolve_vocab(spec, len(tokenizer))

    schedule = plan(len(knowledge.facts), infusion.freq, budget.sequences, infusion.seed)
    dataset = InfusedSequences(background, schedule, knowledge, infusion, tokenizer, budget.seq_len)
    _check_fits(dataset, budget, infusion, cfg.infusion.max_share)

    evaluator = Evaluator(tokenizer, _suites(cfg, world if source == "synthetic" else None, knowledge, infusion),
                          _heldout(tokenizer, heldout_documents, budget.seq_len, cfg.eval.heldout_sequences),
                          batch_items=int(cfg.eval.batch_items), heldout_batch=int(cfg.eval.heldout_batch))
    datamodule = InfusionDataModule(dataset, budget.batch_size, budget.micro_batch_size, int(cfg.data.num_workers))
    return Experiment(tokenizer, knowledge, infusion, budget, spec, vocab_size, datamodule, evaluator)


def _check_fits(dataset: InfusedSequences, budget: Budget, infusion: InfusionConfig, max_share: float) -> None:
    total = budget.sequences * budget.seq_len
    share = dataset.injected_tokens / total
    if share > max_share:
        raise ConfigError(
            "infusion.freq",
            f"injected text within infusion.max_share={max_share} of the budget",
            infusion.freq,
            hint=f"{len(dataset.exposure_tokens)} exposures take {dataset.injected_tokens} of {total} tokens "
            f"({share:.0%}); lower infusion.freq or knowledge.num_facts, or raise tokens",
        )
    if len(dataset.exposure_tokens):
        per_sequence = np.bincount(dataset.schedule.sequence, weights=dataset.exposure_tokens)
        if per_sequence.max() > budget.seq_len:
            raise ConfigError(
                "data.seq_len",
                f"room for the {int(per_sequence.max())} injected tokens the busiest sequence gets",
                budget.seq_len,
                hint="raise data.seq_len or tokens, or lower infusion.freq or knowledge.num_facts",
            )


def _suites(cfg: DictConfig, world: World | None, knowledge: KnowledgeSet, infusion: InfusionConfig) -> dict[str, list]:
    """Memorization, extraction (held-out templates) and, when the background is the world, its own facts."""
    seed = int(cfg.knowledge.seed)
    facts = knowledge.facts
    suites = {"memorization": multiple_choice(knowledge, [memorization_prompt(knowledge, f, infusion) for f in facts], seed)}
    heldout = [extraction_prompt(knowledge, f) for f in facts]
    if all(p is not None for p in heldout):
        suites["extraction"] = multiple_choice(knowledge, heldout, seed)
    count = int(cfg.eval.background_facts)
    if count > 0 and world is not None:
        background = world.background_knowledge()
        pick = np.random.default_rng([int(cfg.eval.seed), 3]).choice(len(background.facts), min(count, len(background.facts)), replace=False)
        chosen = [background.facts[i] for i in sorted(pick)]
        prompts = [background.relations[f.relation].prompt(background.relations[f.relation].templates[0], f.subject) for f in chosen]
        suites["background"] = multiple_choice(background, prompts, int(cfg.eval.seed), facts=chosen)
    return suites


def _heldout(tokenizer, documents: Iterable[str], seq_len: int, count: int) -> torch.Tensor:
    """The first `count` sequences of held-out text, reading no more of it than that takes."""
    if count <= 0:
        return torch.zeros(0, seq_len, dtype=torch.long)
    texts = iter(documents)
    parts: list[np.ndarray] = []
    have = 0
    while have < count * seq_len and (batch := list(itertools.islice(texts, 256))):
        parts.extend(encode_documents(tokenizer, batch))
        have = sum(map(len, parts))
    usable = min(count, have // seq_len)
    if usable == 0:
        return torch.zeros(0, seq_len, dtype=torch.long)
    stream = np.concatenate(parts)
    return torch.from_numpy(stream[: usable * seq_len].astype(np.int64)).view(usable, seq_len)
