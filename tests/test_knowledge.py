from collections import Counter

import pytest

from kinject.errors import ConfigError
from kinject.knowledge.facts import Fact, KnowledgeSet, Relation, multiple_choice

RELATION = Relation.from_config("born_in", {"templates": ["{subject} was born in {object}."]}, "relations")


def _knowledge(n: int = 40) -> KnowledgeSet:
    cities = [f"City{i}" for i in range(10)]
    facts = [Fact(i, f"Person{i // 2}", "born_in", cities[i % 10]) for i in range(n)]
    return KnowledgeSet(facts, {"born_in": RELATION}, {"born_in": cities})


def test_distractors_come_from_the_relation_and_are_never_true():
    knowledge = _knowledge()
    items = multiple_choice(
        knowledge, [RELATION.prompt(RELATION.templates[0], f.subject) for f in knowledge.facts], seed=0
    )
    for fact, item in zip(knowledge.facts, items):
        assert item.options[item.gold] == fact.object
        assert len(set(item.options)) == 4
        assert set(item.options) <= set(knowledge.candidates["born_in"])
        others = set(item.options) - {fact.object}
        assert not others & knowledge.true_objects[(fact.subject, "born_in")]
        assert item.prompt == f"{fact.subject} was born in"


def test_items_are_fixed_by_seed_and_gold_positions_balanced():
    knowledge = _knowledge()
    prompts = [f.subject for f in knowledge.facts]
    assert multiple_choice(knowledge, prompts, seed=5) == multiple_choice(knowledge, prompts, seed=5)
    assert multiple_choice(knowledge, prompts, seed=5) != multiple_choice(knowledge, prompts, seed=6)
    assert set(Counter(item.gold for item in multiple_choice(knowledge, prompts, seed=5)).values()) == {10}


def test_too_few_objects_for_four_options_is_refused():
    with pytest.raises(ConfigError, match="at least 4 distinct objects"):
        KnowledgeSet([Fact(0, "A", "born_in", "X")], {"born_in": RELATION}, {"born_in": ["X", "Y", "Z"]})


def test_empty_knowledge_set_is_refused():
    with pytest.raises(ConfigError, match="knowledge.num_facts"):
        KnowledgeSet([], {"born_in": RELATION}, {"born_in": []})
