"""From a resolved config to everything a run needs, every check done before training starts.

Wiring only: each stage's choice is looked up by name in its registry (background and knowledge
sources, infusion formats, evaluation suites) and each stage's logic lives in its own module.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from kinject.budget import Budget
from kinject.data.filtering import MentionFilter
from kinject.data.sources import BACKGROUND_SOURCES
from kinject.evaluation.scoring import Evaluator, heldout_sequences
from kinject.evaluation.suites import SuiteInputs, build_suites
from kinject.infusion.formats import InfusionConfig
from kinject.infusion.schedule import BLOCK_PACKINGS, plan
from kinject.infusion.sequences import ExposureTexts, InfusedSequences, InfusionDataModule, check_fits
from kinject.knowledge.facts import KnowledgeSet
from kinject.knowledge.sources import KNOWLEDGE_SOURCES
from kinject.knowledge.world import World, WorldConfig
from kinject.training.model import ModelSpec, resolve_vocab
from kinject.validation import validate


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

    def budget_summary(self) -> dict[str, Any]:
        """The `budget` section of the record: D trained, and how much of it was injected text and background
        (with fixed_total injection displaces background; with fixed_background the run grows instead)."""
        injected = self.datamodule.dataset.injected_tokens
        return {
            **self.budget.summary(),
            "mode": self.infusion.budget,
            "injected_tokens": injected,
            "background_tokens": self.budget.tokens_trained - injected,
        }

    def summary(self) -> dict[str, Any]:
        """What every run logs about its infusion: F, K, injected tokens and their share of the budget."""
        dataset = self.datamodule.dataset
        exposures = len(dataset.exposure_tokens)
        return {
            "freq": self.infusion.freq,
            "format": self.infusion.format,
            "paraphrase": self.infusion.paraphrase,
            "packing": self.infusion.packing,
            "window": list(self.infusion.window),
            "num_facts": len(self.knowledge.facts),
            "exposures": exposures,
            "injected_tokens": dataset.injected_tokens,
            "injected_share": dataset.injected_tokens / self.budget.tokens_trained,
            "mean_fact_tokens": dataset.injected_tokens / exposures if exposures else 0.0,
        }


def prepare(cfg: DictConfig) -> Experiment:
    """Builds knowledge, background, tokenizer, schedule, data module and evaluator from config."""
    validate(cfg)
    budget = Budget.from_config(cfg)
    infusion = InfusionConfig.from_config(cfg.infusion)
    spec = ModelSpec.from_config(cfg.model)
    background_source = BACKGROUND_SOURCES.get(cfg.data.source)
    knowledge_source = KNOWLEDGE_SOURCES.get(cfg.knowledge.source)
    # cfg.world is a mapping node: to_container gives a dict
    world = functools.cache(
        lambda: World(WorldConfig.from_config(cast(dict[str, Any], OmegaConf.to_container(cfg.world, resolve=True))))
    )

    knowledge = knowledge_source(cfg.knowledge, world)
    mentions = MentionFilter(knowledge.facts, cfg.data.filter)
    background = background_source(cfg, world, mentions, budget)
    tokenizer = background.tokenizer
    vocab_size = resolve_vocab(spec, len(tokenizer))

    texts = ExposureTexts(knowledge, infusion, tokenizer)
    if infusion.budget == "fixed_background":
        budget = budget.grown(texts.total)
    schedule = plan(
        len(knowledge.facts),
        infusion.freq,
        budget.sequences,
        infusion.seed,
        infusion.window,
        infusion.packing,
        texts.lengths() if infusion.packing in BLOCK_PACKINGS else None,
        budget.seq_len,
    )
    dataset = InfusedSequences(background.stream, schedule, texts, budget.seq_len, budget.sequences)
    check_fits(dataset, budget, infusion.freq, cfg.infusion.max_share)

    suites = build_suites(
        list(cfg.eval.suites),
        SuiteInputs(
            knowledge,
            infusion,
            int(cfg.knowledge.seed),
            background.world,
            int(cfg.eval.background_facts),
            int(cfg.eval.seed),
            schedule,
        ),
    )
    heldout = heldout_sequences(tokenizer, background.heldout_documents, budget.seq_len, cfg.eval.heldout_sequences)
    evaluator = Evaluator(
        tokenizer,
        suites,
        heldout,
        batch_items=int(cfg.eval.batch_items),
        heldout_batch=int(cfg.eval.heldout_batch),
        tradeoff_weight=float(cfg.eval.tradeoff_weight),
    )
    datamodule = InfusionDataModule(dataset, budget.batch_size, budget.micro_batch_size, int(cfg.data.num_workers))
    return Experiment(tokenizer, knowledge, infusion, budget, spec, vocab_size, datamodule, evaluator)
