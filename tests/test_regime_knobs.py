"""The knobs that may decide whether memorization collapses: where exposures go (window), how they are
packed (scattered or in fact-dense blocks), and how many facts a model must hold (K, model=xxs)."""

from __future__ import annotations

import numpy as np
import pytest

from kinject.errors import ConfigError
from kinject.infusion.formats import render
from kinject.infusion.schedule import plan
from kinject.run.experiment import prepare
from kinject.training.model import build, count_params


@pytest.mark.parametrize("window", [(0.0, 0.5), (0.25, 0.75), (0.5, 1.0)])
def test_the_window_holds_every_exposure_f_times_a_fact_one_per_slice(window):
    facts, freq, sequences = 50, 4, 400
    schedule = plan(facts, freq, sequences, seed=0, window=window)
    lo, hi = int(window[0] * sequences), int(window[1] * sequences)
    assert np.array_equal(np.bincount(schedule.fact, minlength=facts), np.full(facts, freq))
    assert lo <= schedule.sequence.min() and schedule.sequence.max() < hi
    assert np.array_equal(((schedule.sequence - lo) * freq) // (hi - lo), schedule.exposure)


def test_a_block_lists_every_fact_in_one_fixed_order_in_consecutive_sequences_of_its_slice():
    facts, freq, sequences, seq_len = 40, 5, 300, 64
    lengths = np.random.default_rng(0).integers(5, 16, size=(freq, facts))
    schedule = plan(facts, freq, sequences, seed=3, packing="block", lengths=lengths, seq_len=seq_len)
    assert np.array_equal(np.bincount(schedule.fact, minlength=facts), np.full(facts, freq))
    orders = []
    for k in range(freq):
        round_k = schedule.exposure == k
        rows = schedule.sequence[round_k]
        assert np.all(np.diff(rows) >= 0) and set(range(rows.min(), rows.max() + 1)) == set(rows.tolist())
        assert k * sequences // freq <= rows.min() and rows.max() < (k + 1) * sequences // freq
        orders.append(schedule.fact[round_k])
        tokens = lengths[k][schedule.fact[round_k]]
        assert np.bincount(rows - rows.min(), weights=tokens).max() <= seq_len
    assert all(np.array_equal(order, orders[0]) for order in orders) and not np.array_equal(orders[0], np.arange(facts))
    again = plan(facts, freq, sequences, seed=3, packing="block", lengths=lengths, seq_len=seq_len)
    assert np.array_equal(again.sequence, schedule.sequence) and np.array_equal(again.fact, schedule.fact)


def test_a_shuffled_block_lists_every_fact_each_round_in_a_new_order():
    facts, freq, sequences, seq_len = 40, 5, 300, 64
    lengths = np.random.default_rng(0).integers(5, 16, size=(freq, facts))
    schedule = plan(facts, freq, sequences, seed=3, packing="shuffled_block", lengths=lengths, seq_len=seq_len)
    orders = []
    for k in range(freq):
        round_k = schedule.exposure == k
        rows = schedule.sequence[round_k]
        assert set(range(rows.min(), rows.max() + 1)) == set(rows.tolist())
        assert k * sequences // freq <= rows.min() and rows.max() < (k + 1) * sequences // freq
        assert sorted(schedule.fact[round_k].tolist()) == list(range(facts))
        orders.append(tuple(schedule.fact[round_k].tolist()))
    assert len(set(orders)) == freq
    neighbours = [{(a, b) for a, b in zip(order, order[1:])} for order in orders]
    assert len(neighbours[0] & neighbours[1]) < facts // 4


def test_a_block_longer_than_its_slice_is_refused_before_training():
    lengths = np.full((20, 40), 16)  # a block takes 10 sequences, a slice has 5
    with pytest.raises(ConfigError, match="infusion.packing.*10 sequences; lower infusion.freq"):
        plan(40, 20, 100, seed=0, packing="block", lengths=lengths, seq_len=64)


def test_a_block_run_trains_each_fact_f_times_back_to_back(make_cfg):
    experiment = prepare(make_cfg("infusion.freq=4", "infusion.packing=block"))
    dataset, knowledge = experiment.datamodule.dataset, experiment.knowledge
    injected = [
        experiment.tokenizer.decode(dataset[i]["input_ids"][: int(dataset[i]["injected"])])
        for i in range(experiment.budget.sequences)
    ]
    text = "".join(injected)
    for fact in knowledge.facts:
        assert text.count(render(knowledge, fact, 0, experiment.infusion)) == 4
    full = [t for t in injected if t]
    assert len(full) < len(knowledge.facts) * 4 / 3  # several facts a sequence, where scattered gives about one
    assert experiment.summary()["exposures"] == len(knowledge.facts) * 4


@pytest.mark.parametrize("value", ["[0.5,0.2]", "[0,2]", "[0.1]", "half"])
def test_a_bad_window_names_the_key_and_the_form_it_takes(make_cfg, value):
    with pytest.raises(ConfigError, match=r"infusion\.window.*0 <= start < end <= 1"):
        prepare(make_cfg(f"infusion.window={value}"))


def test_xxs_is_small_enough_for_thousands_of_facts_to_approach_its_capacity(make_cfg):
    experiment = prepare(make_cfg("model=xxs", "knowledge.num_facts=2000", "infusion.freq=1", "tokens=65536"))
    total, non_embedding = count_params(build(experiment.model, experiment.vocab_size))
    assert non_embedding < 40_000 < total
    assert len({f.subject for f in experiment.knowledge.facts}) == 2000 // 6 + (2000 % 6 > 0)
    assert len(experiment.knowledge.facts) == 2000


@pytest.mark.parametrize(("packing", "freq"), [("scattered", 16), ("block", 3), ("shuffled_block", 3)])
def test_an_in_sequence_question_reads_the_training_sequence_of_the_facts_last_exposure(make_cfg, packing, freq):
    experiment = prepare(
        make_cfg(
            f"infusion.freq={freq}",
            f"infusion.packing={packing}",
            "eval.suites=[memorization,memorization_in_sequence]",
        )
    )
    dataset = experiment.datamodule.dataset
    schedule = dataset.schedule
    last = {int(f): int(s) for f, s, k in zip(schedule.fact, schedule.sequence, schedule.exposure) if k == freq - 1}
    encoded = experiment.evaluator.suites["memorization_in_sequence"]
    alone = experiment.evaluator.suites["memorization"]
    for n, item in enumerate(encoded.items):
        gold, gold_alone = encoded.ids[n * 4 + item.gold], alone.ids[n * 4 + item.gold]
        assert gold == dataset[last[n]]["input_ids"][: len(gold)].tolist()
        assert gold[-len(gold_alone) :] == gold_alone
    assert [item.options for item in encoded.items] == [item.options for item in alone.items]
    assert sum(bool(item.context) for item in encoded.items) > len(encoded.items) // (
        8 if packing == "scattered" else 2
    )


def test_with_nothing_injected_there_is_no_in_sequence_question(make_cfg):
    experiment = prepare(make_cfg("infusion.freq=0", "eval.suites=[memorization,memorization_in_sequence]"))
    assert set(experiment.evaluator.suites) == {"memorization"}
