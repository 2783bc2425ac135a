import re
from collections import Counter

import pytest
from omegaconf import OmegaConf

from kinject.errors import ConfigError
from kinject.knowledge.facts import Relation
from kinject.knowledge.world import World, WorldConfig
from kinject.run.experiment import prepare


def _world(make_cfg, *overrides) -> tuple[World, object]:
    cfg = make_cfg(*overrides)
    return World(WorldConfig.from_config(OmegaConf.to_container(cfg.world, resolve=True))), cfg


def test_injected_subjects_never_occur_in_the_background_corpus(make_cfg):
    world, cfg = _world(make_cfg)
    documents, heldout = world.documents()
    corpus = "\n".join(documents + heldout)
    facts = world.fresh_facts(60, seed=0)
    assert len({f.subject for f in facts}) == 10
    for subject in {f.subject for f in facts}:
        assert not re.search(rf"\b{re.escape(subject)}\b", corpus), subject
    for person in world.people[:5]:
        assert person in corpus


def test_world_has_six_closed_relations_and_is_seeded(make_cfg):
    world, _ = _world(make_cfg)
    again, _ = _world(make_cfg)
    other, _ = _world(make_cfg, "world.seed=1")
    assert len(world.relations) >= 6
    for relation in world.relations.values():
        assert len(relation.templates) >= 3 and relation.heldout
    assert world.documents() == again.documents()
    assert world.documents() != other.documents()
    assert all(f.object in world.objects[world.relations[f.relation].object_type] for f in world.facts)


def test_fresh_facts_are_balanced_over_relations(make_cfg):
    world, _ = _world(make_cfg)
    facts = world.fresh_facts(60, seed=3)
    counts = {r: sum(f.relation == r for f in facts) for r in world.relations}
    assert set(counts.values()) == {10}


def test_templates_must_end_with_the_object():
    with pytest.raises(ConfigError, match=r"relations\.born_in\.templates.*ending in \{object\}"):
        Relation.from_config("born_in", {"templates": ["{object} is where {subject} was born."]}, "relations")


def test_unknown_relation_name_is_refused_before_training(make_cfg):
    with pytest.raises(ConfigError, match=r"knowledge\.include.*born_on_mars"):
        prepare(make_cfg("knowledge.include=[born_in,born_on_mars]"))


def test_background_documents_teach_every_phrasing_held_out_ones_included(make_cfg):
    world, _ = _world(make_cfg)
    documents, _ = world.documents()
    corpus = "\n".join(documents)
    words = Counter(re.findall(r"[a-z]+", corpus.lower()))
    for name, relation in world.relations.items():
        for template in relation.heldout:
            for word in re.findall(r"[a-z]+", template.replace("{subject}", "").replace("{object}", "").lower()):
                assert words[word] > 0, (name, word)
            stem = template.split("{object}")[0]
            said = [f for f in world.facts if f.relation == name and stem.format(subject=f.subject) in corpus]
            assert len(said) > len(world.people) // 10, (name, len(said))


def test_object_names_span_several_tokens_of_varying_length(make_cfg):
    world, cfg = _world(make_cfg)
    experiment = prepare(cfg)
    for kind, names in world.objects.items():
        words = {len(n.split()) for n in names}
        assert len(words) >= 2 and max(words) >= 2, (kind, words)
    encode = experiment.tokenizer
    for name, candidates in experiment.knowledge.candidates.items():
        lengths = {len(encode(" " + c, add_special_tokens=False)["input_ids"]) for c in candidates}
        assert len(lengths) >= 2 and max(lengths) >= 3, (name, sorted(lengths))
