"""The lexical filter: whole words, case-insensitive, two modes, the same answers as a naive regex,
and on the data path: dropped and empty documents never reach training and are counted."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kinject.data.background import LanePosition
from kinject.data.filtering import MentionFilter
from kinject.errors import ConfigError
from kinject.knowledge.facts import Fact
from kinject.run.experiment import prepare
from tests.corpus_files import documents, local, write_parquet

FACTS = [Fact(0, "Paris", "P36", "Lutetia"), Fact(1, "New York", "P19", "Ann Lee"), Fact(2, "Li", "P27", "China")]


@pytest.mark.parametrize(
    "text, mentioned",
    [
        ("A trip to PARIS, in spring.", True),
        ("paris", True),
        ("A comparison of prices.", False),
        ("Parisian cafes", False),
        ("paris_2024 results", False),
        ("She moved to New York.", True),
        ("new yorkers and the new  york fans", False),
        ("Li, the author", True),
        ("Lima and Lily", False),
    ],
)
def test_subject_mode_matches_whole_words_in_any_case(text, mentioned):
    assert MentionFilter(FACTS, "subject").mentions(text) is mentioned


def test_subject_and_object_mode_needs_both_names_of_one_fact():
    both = MentionFilter(FACTS, "subject_and_object")
    assert not both.mentions("Paris is lovely.")
    assert both.mentions("Lutetia was the Roman name of Paris.")
    assert not both.mentions("Paris and China.")
    assert both.mentions("china: a profile of LI")
    assert not MentionFilter(FACTS, "none").mentions("Paris, Lutetia, Li, China")
    with pytest.raises(ConfigError, match=r"data\.filter: expected one of"):
        MentionFilter(FACTS, "anywhere")


def test_the_automaton_agrees_with_a_naive_regex_scan():
    rng = np.random.default_rng(0)
    syllables = ["an", "na", "lee", "li", "ma", "ro", "sa", "ann"]
    names = sorted(
        {
            " ".join("".join(rng.choice(syllables, rng.integers(1, 3))).title() for _ in range(rng.integers(1, 3)))
            for _ in range(60)
        }
    )
    facts = [Fact(i, names[i], "P19", names[-1 - i]) for i in range(len(names) // 2)]
    filler = syllables + ["the", "of", ",", ".", "_", "-", "x1"]
    words = [[rng.choice(names) if rng.random() < 0.15 else rng.choice(filler) for _ in range(12)] for _ in range(400)]
    texts = [" ".join(w).replace(" ,", ",") for w in words]

    def said(name: str, text: str) -> bool:
        return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE) is not None

    for mode, naive in [
        ("subject", lambda t: any(said(f.subject, t) for f in facts)),
        ("subject_and_object", lambda t: any(said(f.subject, t) and said(f.object, t) for f in facts)),
    ]:
        fast = MentionFilter(facts, mode)
        answers = [fast.mentions(t) for t in texts]
        assert answers == [naive(t) for t in texts], mode
        assert 0 < sum(answers) < len(texts), mode


def test_documents_that_mention_an_evaluated_fact_never_reach_training_and_are_counted(make_cfg, tmp_path):
    triples = tmp_path / "triples.jsonl"
    names = ["Zorblax Quint", "Mira Tolk", "Oren Vasq", "Ilse Brann"]
    cities = ["Arlen", "Bexley", "Corva", "Dunmore", "Esk"]
    triples.write_text(
        "".join(f'{{"subject": "{n}", "relation": "P19", "object": "{c}"}}\n' for n, c in zip(names, cities))
    )
    texts = documents(90)
    texts = [t + (" Then zorblax QUINT spoke." if i % 4 == 0 else "") for i, t in enumerate(texts)]
    write_parquet(tmp_path / "000.parquet", texts)
    cfg = local(
        make_cfg,
        str(tmp_path / "*.parquet"),
        "knowledge=wikidata",
        f"knowledge.files={triples}",
        "knowledge.num_facts=4",
        "data.filter=subject",
        "infusion.freq=0",
    )
    experiment = prepare(cfg)
    dataset = experiment.datamodule.dataset
    items = [dataset[i] for i in range(experiment.budget.sequences)]
    trained = "".join(experiment.tokenizer.decode(item["input_ids"]) for item in items)
    assert "zorblax" not in trained.lower() and "doc0001" in trained

    stream = dataset.background
    last = {int(item["position"][0]): item["position"].numpy() for item in items}
    expected = [0, 0]
    for row in last.values():
        p = LanePosition.of(row)
        passed = [t for k in range(p.unit) for t in stream.corpus.texts([stream.unit(p.lane, k)])]
        passed += [t for _, batch in stream.corpus.documents(stream.unit(p.lane, p.unit)) for t in batch][: p.row + 1]
        expected[0] += len(passed)
        expected[1] += sum("zorblax" in t for t in passed)
    stats = stream.filter_stats(last)
    assert (stats.documents, stats.dropped_documents) == tuple(expected) and stats.dropped_documents > 0
    assert stats.dropped_tokens > stats.dropped_documents


def test_the_synthetic_world_loses_nothing_to_the_filter(make_cfg):
    experiment = prepare(make_cfg())
    stats = experiment.datamodule.filter_stats()
    assert stats.dropped_documents == 0 and stats.documents > 0
    assert stats.tokens == experiment.datamodule.dataset.background.epoch_tokens


def test_null_and_blank_texts_never_reach_training_and_are_counted(make_cfg, tmp_path):
    texts = documents(90)
    texts = [None if i % 3 == 0 else " \n" if i % 7 == 0 else t for i, t in enumerate(texts)]
    write_parquet(tmp_path / "000.parquet", texts)
    experiment = prepare(local(make_cfg, str(tmp_path / "*.parquet"), "infusion.freq=0", "data.filter=none"))
    dataset = experiment.datamodule.dataset
    items = [dataset[i] for i in range(experiment.budget.sequences)]
    eos = experiment.tokenizer.eos_token_id
    assert all(not ((ids[1:] == eos) & (ids[:-1] == eos)).any() for ids in (item["input_ids"] for item in items))

    stream = dataset.background
    last = {int(item["position"][0]): item["position"].numpy() for item in items}
    expected = [0, 0]
    for row in last.values():
        p = LanePosition.of(row)
        rows = [t for k in range(p.unit) for _, b in stream.corpus.documents(stream.unit(p.lane, k)) for t in b]
        rows += [t for _, batch in stream.corpus.documents(stream.unit(p.lane, p.unit)) for t in batch][: p.row + 1]
        expected[0] += len(rows)
        expected[1] += sum(not t.strip() for t in rows)
    stats = stream.filter_stats(last)
    assert (stats.documents, stats.empty_documents) == tuple(expected) and 0 < stats.empty_documents
    assert stats.dropped_documents == 0


def test_a_filter_that_drops_every_document_stops_instead_of_reading_forever(make_cfg, tmp_path):
    triples = tmp_path / "triples.jsonl"
    names = ["Zorblax Quint", "Mira Tolk", "Oren Vasq", "Ilse Brann"]
    triples.write_text(
        "".join(f'{{"subject": "{n}", "relation": "P19", "object": "City {i}"}}\n' for i, n in enumerate(names))
    )
    write_parquet(tmp_path / "000.parquet", [f"Then zorblax QUINT spoke. {t}" for t in documents(30)])
    cfg = local(
        make_cfg,
        str(tmp_path / "*.parquet"),
        "knowledge=wikidata",
        f"knowledge.files={triples}",
        "knowledge.num_facts=4",
        "infusion.freq=0",
    )
    dataset = prepare(cfg).datamodule.dataset
    with pytest.raises(ValueError, match=r"expected documents to train on, got none in the 33 units that lane 0 read"):
        dataset[0]
