"""The paper's lexical filter: background documents that mention an evaluated fact are dropped.

So that a fact is seen only where it is injected. One Aho-Corasick automaton over the lower-cased
names finds every occurrence in a single pass over a document, whatever the number of names; a
hit counts only on word boundaries, so "Paris" matches "in Paris," but not "comparison".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import ahocorasick

from kinject.errors import ConfigError
from kinject.knowledge.facts import Fact

MODES = ("none", "subject", "subject_and_object")


@dataclass(frozen=True)
class FilterStats:
    documents: int = 0
    tokens: int = 0
    dropped_documents: int = 0
    dropped_tokens: int = 0
    empty_documents: int = 0  # null or blank texts, skipped (counted in `documents`)

    def __add__(self, other: FilterStats) -> FilterStats:
        return FilterStats(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


class MentionFilter:
    """Whether a text mentions a fact: its subject anywhere, or its subject and object together.

    Names are matched as whole words, case-insensitively.
    """

    def __init__(self, facts: Sequence[Fact], mode: str) -> None:
        if mode not in MODES:
            raise ConfigError("data.filter", f"one of {MODES}", mode)
        self.mode = mode
        self._automaton: ahocorasick.Automaton | None = None
        if mode == "none":
            return
        ids: dict[str, int] = {}
        self._partners: list[set[int]] = []

        def name_id(name: str) -> int:
            key = name.strip().lower()
            if key not in ids:
                ids[key] = len(ids)
                self._partners.append(set())
            return ids[key]

        for fact in facts:
            subject = name_id(fact.subject)
            if mode == "subject_and_object":
                obj = name_id(fact.object)
                self._partners[subject].add(obj)
                self._partners[obj].add(subject)
        self._lengths = [0] * len(ids)
        automaton = ahocorasick.Automaton()
        for key, i in ids.items():
            if key:
                automaton.add_word(key, i)
                self._lengths[i] = len(key)
        if len(automaton):
            automaton.make_automaton()
            self._automaton = automaton

    def mentions(self, text: str) -> bool:
        if self._automaton is None:
            return False
        lower = text.lower()
        found: set[int] = set()
        for end, name in self._automaton.iter(lower):
            start = end - self._lengths[name] + 1
            if (start > 0 and _is_word(lower[start - 1])) or (end + 1 < len(lower) and _is_word(lower[end + 1])):
                continue
            if self.mode == "subject" or self._partners[name] & found:
                return True
            found.add(name)
        return False
