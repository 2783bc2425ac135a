"""How a fact is written into the training stream: the formats (statement, QA pair, both in turn),
registered by name (`infusion.format`), and the prompts that ask for it in the trained form."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kinject.errors import ConfigError
from kinject.knowledge.facts import Fact, KnowledgeSet, Relation
from kinject.registry import Registry

PARAPHRASES = ("duplicate", "paraphrase")


@dataclass(frozen=True)
class InfusionConfig:
    freq: int
    format: str = "statement"
    paraphrase: str = "duplicate"
    seed: int = 0
    budget: str = "fixed_total"  # kinject.budget.MODES
    packing: str = "scattered"  # kinject.infusion.schedule.PACKINGS
    window: tuple[float, float] = (0.0, 1.0)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> InfusionConfig:
        return cls(
            int(cfg["freq"]),
            cfg["format"],
            cfg["paraphrase"],
            int(cfg["seed"]),
            cfg["budget"],
            cfg.get("packing", "scattered"),
            _window(cfg.get("window", (0.0, 1.0))),
        )


def _window(value: Any) -> tuple[float, float]:
    """Checked here, not by a validation rule: the window is a pair whose two ends constrain each other."""
    pair = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    numeric = len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
    if not numeric or not 0 <= pair[0] < pair[1] <= 1:
        raise ConfigError(
            "infusion.window",
            "[start, end], fractions of the run with 0 <= start < end <= 1",
            value,
            hint="e.g. infusion.window=[0,0.5] spreads the exposures over the first half",
        )
    return float(pair[0]), float(pair[1])


class Format(Protocol):
    """How a fact is written into the stream. An exposure's text depends on its *variant* alone, the first
    exposure number that reads the same (with `duplicate`, every exposure is variant 0 or, when a format
    alternates, 0 and 1), so each distinct text is tokenized once."""

    alternates: int

    def text(self, relation: Relation, fact: Fact, variant: int) -> str: ...

    def prompt(self, relation: Relation, fact: Fact) -> str:
        """The multiple-choice question in the form the fact was first trained on."""


FORMATS: Registry[Format] = Registry("infusion.format")


class Statement:
    alternates = 1

    def text(self, relation: Relation, fact: Fact, variant: int) -> str:
        return relation.statement(relation.templates[variant % len(relation.templates)], fact.subject, fact.object)

    def prompt(self, relation: Relation, fact: Fact) -> str:
        return relation.prompt(relation.templates[0], fact.subject)


class QuestionAnswer:
    alternates = 1

    def text(self, relation: Relation, fact: Fact, variant: int) -> str:
        return relation.qa(variant, fact.subject, fact.object)

    def prompt(self, relation: Relation, fact: Fact) -> str:
        return relation.qa_prompt(0, fact.subject)


class Mixed:
    """Statement and question-answer pair in turn; the k-th of each uses template k // 2 with paraphrase."""

    alternates = 2

    def text(self, relation: Relation, fact: Fact, variant: int) -> str:
        form = QuestionAnswer() if variant % 2 else Statement()
        return form.text(relation, fact, variant // 2)

    def prompt(self, relation: Relation, fact: Fact) -> str:
        return Statement().prompt(relation, fact)


FORMATS.register("statement")(Statement())
FORMATS.register("qa")(QuestionAnswer())
FORMATS.register("mixed")(Mixed())


def variants(exposure: np.ndarray, config: InfusionConfig) -> np.ndarray:
    """The variant of each exposure number: itself with paraphrase, else its place in the format's alternation."""
    if config.paraphrase == "paraphrase":
        return exposure
    return exposure % FORMATS.get(config.format).alternates


def render(knowledge: KnowledgeSet, fact: Fact, exposure: int, config: InfusionConfig) -> str:
    """The text of a fact's k-th exposure."""
    variant = int(variants(np.array([exposure]), config)[0])
    return FORMATS.get(config.format).text(knowledge.relations[fact.relation], fact, variant)


def memorization_prompt(knowledge: KnowledgeSet, fact: Fact, config: InfusionConfig) -> str:
    return FORMATS.get(config.format).prompt(knowledge.relations[fact.relation], fact)


def extraction_prompt(knowledge: KnowledgeSet, fact: Fact) -> str | None:
    """The question in a held-out template the injected texts never use."""
    relation = knowledge.relations[fact.relation]
    return relation.prompt(relation.heldout[0], fact.subject) if relation.heldout else None
