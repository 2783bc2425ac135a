"""Evaluation suites: which items a run is scored on, each registered by name.

`eval.suites` lists the names; a suite that has nothing to ask in a setting (no held-out templates,
no background world) yields no items and is left out. A new suite is one function here plus its
name in `eval.suites`. The suites named in RECALL are answered by the model (greedy decoding,
kinject.evaluation.recall); the others are 4-way multiple choice scored by likelihood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np

from kinject.infusion.formats import InfusionConfig, QuestionAnswer, extraction_prompt, memorization_prompt, render
from kinject.infusion.schedule import Schedule
from kinject.knowledge.facts import Item, KnowledgeSet, Relation, multiple_choice
from kinject.knowledge.world import World
from kinject.registry import Registry


@dataclass(frozen=True)
class SuiteInputs:
    knowledge: KnowledgeSet  # the injected facts
    infusion: InfusionConfig
    seed: int  # distractors and gold positions of the injected facts' items (knowledge.seed)
    world: World | None  # the synthetic world, when it is the background corpus
    background_facts: int  # eval.background_facts
    eval_seed: int  # which background facts, and their distractors (eval.seed)
    schedule: Schedule | None = None  # where the run places each exposure


Suite = Callable[[SuiteInputs], list[Item]]
SUITES: Registry[Suite] = Registry("eval.suites")


@SUITES.register("memorization")
def memorization(inputs: SuiteInputs) -> list[Item]:
    """The injected facts, asked in the form they were trained on."""
    knowledge = inputs.knowledge
    return multiple_choice(
        knowledge, [memorization_prompt(knowledge, f, inputs.infusion) for f in knowledge.facts], inputs.seed
    )


@SUITES.register("memorization_in_sequence")
def memorization_in_sequence(inputs: SuiteInputs) -> list[Item]:
    """The injected facts asked where they were last trained: after the texts spliced before the fact's last
    exposure in its sequence (with `block` packing, its neighbours in the list). Beside `memorization`, which
    asks each fact alone, it tells a fact known only inside its list from one that is lost. Empty at F = 0."""
    knowledge, schedule = inputs.knowledge, inputs.schedule
    if schedule is None or not len(schedule.fact):
        return []
    contexts = [
        tuple(render(knowledge, knowledge.facts[g], k, inputs.infusion) for g, k in before)
        for before in schedule.before_last(len(knowledge.facts))
    ]
    prompts = [memorization_prompt(knowledge, f, inputs.infusion) for f in knowledge.facts]
    return multiple_choice(knowledge, prompts, inputs.seed, contexts=contexts)


@SUITES.register("extraction")
def extraction(inputs: SuiteInputs) -> list[Item]:
    """The injected facts, asked with a held-out template."""
    knowledge = inputs.knowledge
    prompts = [extraction_prompt(knowledge, f) for f in knowledge.facts]
    if any(p is None for p in prompts):
        return []
    return multiple_choice(knowledge, cast(list[str], prompts), inputs.seed)  # no None: checked above


@SUITES.register("question")
def question(inputs: SuiteInputs) -> list[Item]:
    """The injected facts asked as the paper asks them: the relation's question, each option as the answer.
    Empty when the relations have no questions (knowledge.relations.NAME.questions)."""
    knowledge = inputs.knowledge
    if not all(knowledge.relations[f.relation].questions for f in knowledge.facts):
        return []
    prompts = [QuestionAnswer().prompt(knowledge.relations[f.relation], f) for f in knowledge.facts]
    return multiple_choice(knowledge, prompts, inputs.seed)


def _background_items(inputs: SuiteInputs, template: Callable[[Relation], str | None]) -> list[Item]:
    """A seeded sample of the synthetic world's background facts (the same sample for every phrasing)."""
    if inputs.world is None or inputs.background_facts <= 0:
        return []
    known = inputs.world.background_knowledge()
    count = min(inputs.background_facts, len(known.facts))
    pick = np.random.default_rng([inputs.eval_seed, 3]).choice(len(known.facts), count, replace=False)
    chosen = [known.facts[i] for i in sorted(pick)]
    templates = [template(known.relations[f.relation]) for f in chosen]
    if any(t is None for t in templates):
        return []
    present = cast(list[str], templates)  # no None: checked above
    prompts = [known.relations[f.relation].prompt(t, f.subject) for f, t in zip(chosen, present)]
    return multiple_choice(known, prompts, inputs.eval_seed, facts=chosen)


@SUITES.register("background")
def background(inputs: SuiteInputs) -> list[Item]:
    """Facts the background corpus teaches (forgetting), asked in the relation's first template."""
    return _background_items(inputs, lambda relation: relation.templates[0])


@SUITES.register("background_extraction")
def background_extraction(inputs: SuiteInputs) -> list[Item]:
    """The same background facts asked in the held-out phrasing, which the corpus uses for background people
    only: whether that phrasing was learned at all, the ceiling for `extraction` of the injected facts."""
    return _background_items(inputs, lambda relation: relation.heldout[0] if relation.heldout else None)


@SUITES.register("recall")
def recall(inputs: SuiteInputs) -> list[Item]:
    """`memorization`'s questions (each fact alone), answered by the model."""
    return memorization(inputs)


@SUITES.register("recall_in_sequence")
def recall_in_sequence(inputs: SuiteInputs) -> list[Item]:
    """`memorization_in_sequence`'s questions (after the fact's list neighbours), answered by the model."""
    return memorization_in_sequence(inputs)


@SUITES.register("background_recall")
def background_recall(inputs: SuiteInputs) -> list[Item]:
    """`background`'s questions (facts of the background corpus), answered by the model."""
    return background(inputs)


RECALL = ("recall", "recall_in_sequence", "background_recall")


def build_suites(names: list[str], inputs: SuiteInputs) -> dict[str, list[Item]]:
    return {name: items for name in names if (items := SUITES.get(name)(inputs))}
