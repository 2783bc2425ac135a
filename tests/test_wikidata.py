"""Wikidata triples: the accepted layouts, balanced seeded sampling, fair distractors, clear errors,
and the same path through infusion and evaluation as the synthetic world."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kinject.cli import train as train_script
from kinject.errors import ConfigError
from kinject.infusion.formats import render
from kinject.knowledge import wikidata
from kinject.knowledge.facts import multiple_choice
from kinject.run.experiment import prepare
from tests.conftest import ROOT

RELATIONS = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "knowledge" / "wikidata.yaml").relations)
TRIPLES = [(f"Person {i}", "P19", city) for i, city in enumerate(["Oslo", "Lima", "Quito", "Accra", "Hanoi", "Oslo"])]
COUNTRIES = ["Norway", "Peru", "Ghana", "Chile", "Japan", "Kenya"]
TRIPLES += [(f"Person {i}", "P27", country) for i, country in enumerate(COUNTRIES)]
TRIPLES += [
    ("Person 0", "P27", "Chile"),
    ("Acme", "P159", "Oslo"),
    ("Zeta", "P159", "Lima"),
    ("Ion", "P159", "Quito"),
    ("Umbra", "P159", "Accra"),
]


def write(path: Path, layout: str) -> Path:
    if layout == "lama":
        path.write_text(
            "".join(
                json.dumps(
                    {
                        "uuid": str(i),
                        "sub_uri": f"Q{i}",
                        "sub_label": s,
                        "predicate_id": r,
                        "obj_uri": f"Q{100 + i}",
                        "obj_label": o,
                        "evidences": [],
                    }
                )
                + "\n"
                for i, (s, r, o) in enumerate(TRIPLES)
            )
        )
    elif layout == "csv":
        path.write_text(
            "subject_id,subject,relation,object\n"
            + "".join(f"Q{i},{s},{r},{o}\n" for i, (s, r, o) in enumerate(TRIPLES))
        )
    else:
        path.write_text("\n".join(json.dumps({"subject": s, "relation": r, "object": o}) for s, r, o in TRIPLES) + "\n")
    return path


def load(files, num_facts: int = 9, seed: int = 0, include=None, relations=RELATIONS):
    return wikidata.load(str(files), relations, include, num_facts, seed)


@pytest.mark.parametrize("layout, name", [("jsonl", "t.jsonl"), ("csv", "t.csv"), ("lama", "P19.jsonl")])
def test_every_layout_gives_the_same_knowledge(tmp_path, layout, name):
    knowledge = load(write(tmp_path / name, layout))
    reference = load(write(tmp_path / "ref.jsonl", "jsonl"))
    assert knowledge.facts == reference.facts
    assert knowledge.candidates == reference.candidates and knowledge.true_objects == reference.true_objects


def test_sampling_is_seeded_and_balanced_over_relations(tmp_path):
    files = write(tmp_path / "t.jsonl", "jsonl")
    facts = load(files, num_facts=7).facts
    assert sorted(Counter(f.relation for f in facts).values()) == [2, 2, 3]
    assert load(files, num_facts=7).facts == facts
    assert load(files, num_facts=7, seed=1).facts != facts
    assert [f.id for f in facts] == list(range(7))
    only = load(files, num_facts=3, include=["P159"]).facts
    assert {f.relation for f in only} == {"P159"}


def test_distractors_are_never_another_true_object_of_the_subject(tmp_path):
    knowledge = load(write(tmp_path / "t.jsonl", "jsonl"), num_facts=len(TRIPLES) - 1)
    assert knowledge.true_objects[("Person 0", "P27")] == {"Norway", "Chile"}
    items = multiple_choice(knowledge, [f.subject for f in knowledge.facts], seed=0)
    for fact, item in zip(knowledge.facts, items):
        truth = knowledge.true_objects[(fact.subject, fact.relation)]
        assert [o for i, o in enumerate(item.options) if i != item.gold and o in truth] == []
        assert item.options[item.gold] == fact.object


@pytest.mark.parametrize(
    "content, name, match",
    [
        (
            '{"subject": "A", "relation": "P19", "object": "Oslo"}\n\n{"subject": "B", "relation": "P19"\n',
            "t.jsonl",
            r"t\.jsonl:3: expected a triple with labels",
        ),
        (
            '{"subject": "A", "relation": "P19", "object": "Oslo"}\n'
            '{"subject": "B", "relation": "P19", "object": ""}\n',
            "t.jsonl",
            r"t\.jsonl:2: expected a triple",
        ),
        ("subject,relation,object\nA,P19,Oslo\nB,P19\n", "t.csv", r"t\.csv:3: expected a triple"),
        ("A,P19,Oslo\n", "t.txt", r"knowledge\.files: expected files ending in \.jsonl, \.json, \.csv or \.tsv"),
    ],
)
def test_malformed_triple_files_name_the_file_and_line(tmp_path, content, name, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=match):
        load(tmp_path / name, num_facts=1)


def test_bad_knowledge_configs_are_clear_errors(tmp_path):
    files = write(tmp_path / "t.jsonl", "jsonl")
    with pytest.raises(ConfigError, match=r"knowledge\.relations: expected templates.*\['P19'\]"):
        load(files, relations={k: v for k, v in RELATIONS.items() if k != "P19"})
    with pytest.raises(ConfigError, match=r"knowledge\.include: expected relations that the triple files hold.*P36"):
        load(files, include=["P19", "P36"])
    few = [{"subject": f"S{i}", "relation": "P20", "object": f"City {i % 3}"} for i in range(6)]
    (tmp_path / "few.jsonl").write_text("".join(json.dumps(t) + "\n" for t in few))
    with pytest.raises(ConfigError, match="at least 4 distinct objects for relation 'P20'"):
        load(tmp_path / "few.jsonl", num_facts=2)
    with pytest.raises(ConfigError, match=r"knowledge\.num_facts: expected at most the 4 distinct triples"):
        load(files, include=["P159"], num_facts=5)
    with pytest.raises(ConfigError, match=r"knowledge\.files: expected paths or globs that match files"):
        load(tmp_path / "missing" / "*.jsonl")


def test_wikidata_facts_are_injected_and_asked_like_synthetic_ones(make_cfg, tmp_path):
    files = write(tmp_path / "t.jsonl", "jsonl")
    experiment = prepare(
        make_cfg("knowledge=wikidata", f"knowledge.files={files}", "knowledge.num_facts=9", "infusion.freq=2")
    )
    dataset = experiment.datamodule.dataset
    injected = "".join(
        experiment.tokenizer.decode(dataset[i]["input_ids"][: int(dataset[i]["injected"])])
        for i in range(experiment.budget.sequences)
    )
    for fact in experiment.knowledge.facts:
        assert injected.count(render(experiment.knowledge, fact, 0, experiment.infusion)) == 2
    assert {"memorization", "extraction"} <= set(experiment.evaluator.suites)


def test_a_csv_with_a_byte_order_mark_reads_like_one_without(tmp_path):
    plain = write(tmp_path / "t.csv", "csv")
    marked = tmp_path / "bom.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load(marked).facts == load(plain).facts


def test_a_latin1_csv_is_named_with_its_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("subject,relation,object\nPerson 1,P19,Oslo\nJosé,P19,Bogotá\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.csv:3: expected UTF-8 text.*iconv"):
        load(path)


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.jsonl", "", r"empty\.jsonl: expected at least one triple with labels.*got 'an empty file'"),
        ("blank.jsonl", "\n  \n", r"blank\.jsonl: expected at least one triple .*got 'an empty file'"),
        (
            "header.csv",
            "subject,relation,object\n",
            r"header\.csv: expected at least one triple .*got 'only a header row'",
        ),
        (
            "folder",
            None,
            r"knowledge\.files: expected paths or globs that match files, got '.*folder'\. it is a folder",
        ),
    ],
)
def test_a_triples_file_without_triples_is_named(make_cfg, tmp_path, name, content, match):
    """Next to a good file too: an empty file in a glob is a download that went wrong, not a smaller set."""
    good = write(tmp_path / "good.jsonl", "jsonl")
    if content is None:
        (tmp_path / name).mkdir()
    else:
        (tmp_path / name).write_text(content)
    for files in (tmp_path / name, f"[{good},{tmp_path / name}]"):
        with pytest.raises(ConfigError, match=match):
            train_script.train(make_cfg("knowledge=wikidata", f"knowledge.files={files}", "knowledge.num_facts=9"))
