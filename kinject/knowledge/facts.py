"""Facts, relations and their renderings: what gets injected and what gets asked.

A relation owns its templates (object last, so a causal model can be scored on the object given the
rest), split into trained and held-out ones. Every source of knowledge (the synthetic world,
Wikidata files) produces the same `KnowledgeSet`, so infusion and evaluation never care where
facts came from.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kinject.errors import ConfigError

OPTIONS = 4
_OBJECT_LAST = re.compile(r"^(?P<stem>.*\S)\s*\{object\}(?P<tail>[.!?]?)$")


@dataclass(frozen=True)
class Relation:
    name: str
    templates: tuple[str, ...]
    heldout: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()
    object_type: str | None = None

    @classmethod
    def from_config(cls, name: str, spec: Mapping[str, Any], key: str) -> Relation:
        templates = tuple(spec.get("templates") or ())
        if not templates:
            raise ConfigError(f"{key}.{name}.templates", "at least one template", templates)
        relation = cls(
            name=name,
            templates=templates,
            heldout=tuple(spec.get("heldout") or ()),
            questions=tuple(spec.get("questions") or ()),
            object_type=spec.get("object_type"),
        )
        for kind in ("templates", "heldout"):
            for template in getattr(relation, kind):
                if "{subject}" not in template or not _OBJECT_LAST.match(template):
                    raise ConfigError(
                        f"{key}.{name}.{kind}",
                        "a template with {subject} and ending in {object} (optionally then . ! or ?)",
                        template,
                    )
        for question in relation.questions:
            if "{subject}" not in question or "{object}" in question:
                raise ConfigError(f"{key}.{name}.questions", "a question with {subject} and no {object}", question)
        return relation

    def statement(self, template: str, subject: str, obj: str) -> str:
        return template.format(subject=subject, object=obj)

    def prompt(self, template: str, subject: str) -> str:
        """The template up to the object, the question a multiple-choice item asks."""
        return _OBJECT_LAST.match(template)["stem"].format(subject=subject)  # type: ignore[index]

    def qa(self, question_index: int, subject: str, obj: str) -> str:
        return f"{self.qa_prompt(question_index, subject)} {obj}."

    def qa_prompt(self, question_index: int, subject: str) -> str:
        if not self.questions:
            raise ConfigError(f"relations.{self.name}.questions", "at least one question for infusion.format=qa", [])
        question = self.questions[question_index % len(self.questions)]
        return f"Question: {question.format(subject=subject)} Answer:"


def parse_relations(spec: Mapping[str, Any], key: str) -> dict[str, Relation]:
    relations = {name: Relation.from_config(name, dict(body), key) for name, body in spec.items()}
    if not relations:
        raise ConfigError(key, "at least one relation", {})
    return relations


@dataclass(frozen=True)
class Fact:
    id: int
    subject: str
    relation: str
    object: str


@dataclass
class KnowledgeSet:
    """Facts plus what distractors need: each relation's candidate objects and every true object."""

    facts: list[Fact]
    relations: dict[str, Relation]
    candidates: dict[str, list[str]]
    true_objects: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.facts:
            raise ConfigError("knowledge.num_facts", "a knowledge set with at least one fact", 0)
        if not self.true_objects:
            truth: dict[tuple[str, str], set[str]] = defaultdict(set)
            for fact in self.facts:
                truth[(fact.subject, fact.relation)].add(fact.object)
            self.true_objects = dict(truth)
        for relation in {fact.relation for fact in self.facts}:
            if relation not in self.relations:
                raise ConfigError("knowledge.relations", f"templates for relation '{relation}'", list(self.relations))
            if len(set(self.candidates.get(relation, ()))) < OPTIONS:
                raise ConfigError(
                    "knowledge",
                    f"at least {OPTIONS} distinct objects for relation '{relation}' to draw distractors from",
                    len(set(self.candidates.get(relation, ()))),
                )


@dataclass(frozen=True)
class Item:
    """A 4-way multiple-choice question about one fact."""

    fact_id: int
    relation: str
    prompt: str
    options: tuple[str, ...]
    gold: int
    context: tuple[str, ...] = ()  # documents read before the prompt, each EOS-led as in training


def multiple_choice(
    knowledge: KnowledgeSet,
    prompts: Sequence[str],
    seed: int,
    facts: Sequence[Fact] | None = None,
    contexts: Sequence[tuple[str, ...]] | None = None,
) -> list[Item]:
    """Items whose distractors and gold position depend only on the seed and the fact.

    Distractors come from the same relation and are never another true object of the subject, so
    every model and every F is asked exactly the same questions; gold positions are balanced.
    """
    facts = list(knowledge.facts if facts is None else facts)
    contexts = [()] * len(facts) if contexts is None else contexts
    rng = np.random.default_rng([seed, 7])
    golds = rng.permutation(np.arange(len(facts)) % OPTIONS)
    items = []
    for fact, prompt, gold, context in zip(facts, prompts, golds, contexts, strict=True):
        excluded = knowledge.true_objects.get((fact.subject, fact.relation), set()) | {fact.object}
        pool = sorted(set(knowledge.candidates[fact.relation]) - excluded)
        if len(pool) < OPTIONS - 1:
            raise ConfigError("knowledge", f"{OPTIONS - 1} distractors for fact {fact}", pool)
        pick = np.random.default_rng([seed, fact.id]).choice(len(pool), OPTIONS - 1, replace=False)
        options = [pool[i] for i in pick]
        options.insert(int(gold), fact.object)
        items.append(Item(fact.id, fact.relation, prompt, tuple(options), int(gold), tuple(context)))
    return items
