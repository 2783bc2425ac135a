"""A seeded fictional world: the embedded, offline stand-in for FineWeb-Edu plus Wikidata.

Names are built from syllables, so no fact can be known before training; object names span one to
four words (a few tokens each, of varying length, as real objects do), so summed and per-token
scoring can disagree. Background people get encyclopedic documents (their facts in every phrasing
of their relation, held-out templates included, shuffled, with connective prose): the corpus
teaches what each phrasing means, so asking an injected fact in a held-out phrasing tests
extraction, not vocabulary. The people whose facts are injected are drawn from the same generator
but never appear in a document, the synthetic analogue of the paper's corpus filtering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinject.errors import ConfigError
from kinject.knowledge.facts import Fact, KnowledgeSet, Relation, parse_relations

_ONSETS = "b c d f g h k l m n p r s t v z br dr gr kr pr st tr th sh ch".split()
_VOWELS = "a e i o u ai ea io ou".split()
_CODAS = ["", "", "n", "r", "l", "s", "th", "nd", "rk", "m"]
_OCCUPATIONS = (
    "baker,carpenter,chemist,civil engineer,farmer,geologist,historian,tax lawyer,journalist,librarian,"
    "ship mechanic,jazz musician,nurse,portrait painter,pharmacist,airline pilot,poet,potter,heart surgeon,"
    "sailor,primary school teacher,translator,weaver,landscape architect,dentist,radio astronomer,botanist,"
    "cartographer,diplomat,tailor"
).split(",")
_STEM_WORDS = (1, 2, 3)  # words in a place or organisation name, drawn with _STEM_WEIGHTS
_STEM_WEIGHTS = (0.5, 0.35, 0.15)
_SUFFIXES = {
    "city": ["", "", "ford", "haven", "burg", "mouth"],
    "country": ["ia", "land", "ary", "istan", "or"],
    "company": [" Systems", " Industries", " Works", " Labs", " Holdings", " Trading"],
    "university": [" University", " Institute", " College", " Academy"],
}
_CONNECTIVES = ["", "", "", "Also, ", "In addition, ", "Moreover, ", "Notably, ", "As records show, "]
_FILLER = [
    "{first} enjoys long walks in the hills.",
    "Little is written about the early years of {first}.",
    "Friends describe {first} as patient and curious.",
    "{first} keeps a small garden and a large library.",
    "In the evenings, {first} plays chess with neighbours.",
    "{first} once travelled across the northern sea by boat.",
    "Colleagues remember {first} for a dry sense of humour.",
    "{first} collects old maps and handwritten letters.",
]
_PLACE_FILLER = [
    "{name} is known for its markets and its old stone bridges.",
    "Visitors to {name} often mention the mild climate.",
    "Many families have lived in {name} for generations.",
    "{name} hosts a festival of music every summer.",
]


@dataclass(frozen=True)
class WorldConfig:
    seed: int
    people: int
    docs_per_person: int
    heldout_docs: int
    entities: Mapping[str, int]
    relations: Mapping[str, Any]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> WorldConfig:
        for kind, count in cfg["entities"].items():
            if not isinstance(count, int) or count < 4:
                raise ConfigError(f"world.entities.{kind}", "an integer >= 4 (4 options per question)", count)
        return cls(
            int(cfg["seed"]),
            int(cfg["people"]),
            int(cfg["docs_per_person"]),
            int(cfg["heldout_docs"]),
            dict(cfg["entities"]),
            dict(cfg["relations"]),
        )


class _Names:
    """Unique syllable names; one generator per world so names never collide across kinds."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)]
        return str("".join(parts) + self.rng.choice(_CODAS)).capitalize()

    def unique(self, make) -> str:
        for _ in range(10_000):
            name = make()
            if name not in self.used and name.lower() not in self.used:
                self.used.add(name)
                return name
        raise ConfigError("world", "a world small enough to name uniquely", "too many entities")

    def stem(self) -> str:
        """One to three words of one to three syllables: names of varying token length."""
        words = self.rng.choice(_STEM_WORDS, p=_STEM_WEIGHTS)
        return " ".join(self.word(1 + int(self.rng.integers(3))) for _ in range(words))

    def person(self) -> str:
        return self.unique(lambda: f"{self.word(1 + int(self.rng.integers(2)))} {self.word(2)}")


class World:
    """Entities, background people with their facts, and the documents about them."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        self.relations: dict[str, Relation] = parse_relations(config.relations, "world.relations")
        rng = np.random.default_rng([config.seed, 0])
        self._names = _Names(rng)
        self.objects: dict[str, list[str]] = {}
        for kind, count in config.entities.items():
            if kind == "occupation":
                if count > len(_OCCUPATIONS):
                    raise ConfigError("world.entities.occupation", f"at most {len(_OCCUPATIONS)}", count)
                self.objects[kind] = list(_OCCUPATIONS[:count])
            else:
                suffixes = _SUFFIXES.get(kind, [""])
                self.objects[kind] = [
                    self._names.unique(lambda s=suffixes: self._names.stem() + str(rng.choice(s))) for _ in range(count)
                ]
        for name, relation in self.relations.items():
            if relation.object_type not in self.objects:
                raise ConfigError(
                    f"world.relations.{name}.object_type", f"one of {sorted(self.objects)}", relation.object_type
                )
        self.people = [self._names.person() for _ in range(config.people)]
        self.facts = self._facts_about(self.people, rng)
        self.located_in = {city: str(rng.choice(self.objects["country"])) for city in self.objects.get("city", [])}

    def _facts_about(
        self, people: list[str], rng: np.random.Generator, relations: list[str] | None = None
    ) -> list[Fact]:
        facts: list[Fact] = []
        for person in people:
            for name in relations or self.relations:
                obj = str(rng.choice(self.objects[self.relations[name].object_type]))  # type: ignore[index]
                facts.append(Fact(len(facts), person, name, obj))
        return facts

    def fresh_facts(self, num_facts: int, seed: int, relations: list[str] | None = None) -> list[Fact]:
        """Facts about people who appear in no background document, balanced over relations."""
        relations = relations or list(self.relations)
        rng = np.random.default_rng([self.config.seed, 1, seed])
        names = _Names(rng)
        names.used = set(self._names.used)
        people = [names.person() for _ in range(-(-num_facts // len(relations)))]
        return self._facts_about(people, rng, relations)[:num_facts]

    def knowledge(self, facts: list[Fact]) -> KnowledgeSet:
        candidates = {name: list(self.objects[r.object_type]) for name, r in self.relations.items()}  # type: ignore[index]
        return KnowledgeSet(facts, self.relations, candidates)

    def background_knowledge(self) -> KnowledgeSet:
        return self.knowledge(self.facts)

    def documents(self) -> tuple[list[str], list[str]]:
        """Training documents and held-out documents (never trained on) about the background world."""
        rng = np.random.default_rng([self.config.seed, 2])
        by_person: dict[str, list[Fact]] = {}
        for fact in self.facts:
            by_person.setdefault(fact.subject, []).append(fact)
        docs = [self._biography(by_person[p], rng) for _ in range(self.config.docs_per_person) for p in self.people]
        docs += [self._place(city, rng) for city in self.located_in for _ in range(self.config.docs_per_person // 4)]
        heldout = [
            self._biography(by_person[str(rng.choice(self.people))], rng) for _ in range(self.config.heldout_docs)
        ]
        return docs, heldout

    def _biography(self, facts: list[Fact], rng: np.random.Generator) -> str:
        subject = facts[0].subject
        first = subject.split()[0]
        sentences = []
        for fact in facts:
            relation = self.relations[fact.relation]
            phrasings = relation.templates + relation.heldout
            template = phrasings[rng.integers(len(phrasings))]
            sentence = relation.statement(template, subject, fact.object)
            connective = _CONNECTIVES[rng.integers(len(_CONNECTIVES))]
            if connective and sentence.startswith("The "):
                sentence = "the " + sentence[4:]
            sentences.append(connective + sentence)
        for _ in range(rng.integers(1, 3)):
            sentences.append(_FILLER[rng.integers(len(_FILLER))].format(first=first))
        rng.shuffle(sentences)
        return " ".join(s[0].upper() + s[1:] for s in sentences)

    def _place(self, city: str, rng: np.random.Generator) -> str:
        country = self.located_in[city]
        sentences = [f"{city} is a city in {country}."]
        sentences += [_PLACE_FILLER[i].format(name=city) for i in rng.permutation(len(_PLACE_FILLER))[:2]]
        return " ".join(sentences)
