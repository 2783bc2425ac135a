"""Infusion formats: statements, QA, mixed; duplicated or paraphrased exposures; held-out templates."""

from __future__ import annotations

import re

import pytest

from kinject.infusion.formats import InfusionConfig, extraction_prompt, memorization_prompt, render
from kinject.run.experiment import prepare

FREQ = 4


def _stream_text(experiment, injected_only: bool) -> str:
    dataset = experiment.datamodule.dataset
    decode = experiment.tokenizer.decode
    parts = []
    for i in range(experiment.budget.sequences):
        item = dataset[i]
        ids = item["input_ids"][: int(item["injected"])] if injected_only else item["input_ids"]
        parts.append(decode(ids))
    return "\n".join(parts)


@pytest.mark.parametrize("form", ["statement", "qa", "mixed"])
@pytest.mark.parametrize("paraphrase", ["duplicate", "paraphrase"])
def test_each_fact_is_injected_exactly_f_times_in_every_format(make_cfg, form, paraphrase):
    experiment = prepare(
        make_cfg(f"infusion.freq={FREQ}", f"infusion.format={form}", f"infusion.paraphrase={paraphrase}")
    )
    text = _stream_text(experiment, injected_only=True)
    for fact in experiment.knowledge.facts:
        renderings = {render(experiment.knowledge, fact, k, experiment.infusion) for k in range(FREQ)}
        assert sum(text.count(r) for r in renderings) == FREQ, fact
        if paraphrase == "paraphrase" and form == "statement":
            assert len(renderings) == 3
        if paraphrase == "duplicate" and form != "mixed":
            assert len(renderings) == 1


def test_heldout_templates_never_appear_in_injected_text(make_cfg):
    experiment = prepare(make_cfg("infusion.freq=4", "infusion.paraphrase=paraphrase", "infusion.format=mixed"))
    injected = _stream_text(experiment, injected_only=True)
    for relation in experiment.knowledge.relations.values():
        for template in relation.heldout:
            literal = max(re.split(r"\{subject\}|\{object\}", template), key=len).strip()
            assert literal and literal not in injected, literal
        assert max(re.split(r"\{subject\}|\{object\}", relation.templates[0]), key=len).strip() in injected


def test_qa_and_statement_renderings_share_subject_and_object(make_cfg):
    experiment = prepare(make_cfg())
    knowledge = experiment.knowledge
    for fact in knowledge.facts:
        statement = render(knowledge, fact, 0, InfusionConfig(1, "statement"))
        qa = render(knowledge, fact, 0, InfusionConfig(1, "qa"))
        assert qa.startswith("Question:") and statement != qa
        for text in (statement, qa):
            assert fact.subject in text and text.endswith(f" {fact.object}.")


def test_memorization_asks_the_trained_form_and_extraction_a_heldout_one(make_cfg):
    experiment = prepare(make_cfg("infusion.format=qa"))
    knowledge, fact = experiment.knowledge, experiment.knowledge.facts[0]
    assert memorization_prompt(knowledge, fact, experiment.infusion).startswith("Question:")
    heldout = knowledge.relations[fact.relation].heldout[0]
    assert extraction_prompt(knowledge, fact) == heldout.split("{object}")[0].format(subject=fact.subject).strip()
    suites = experiment.evaluator.suites
    assert [i.prompt for i in suites["memorization"].items][0].startswith("Question:")
    assert not [i.prompt for i in suites["extraction"].items][0].startswith("Question:")
