import numpy as np
import pytest

from kinject.errors import ConfigError
from kinject.infusion.formats import render
from kinject.infusion.schedule import plan
from kinject.run.experiment import prepare


@pytest.mark.parametrize("freq", [1, 3, 16])
def test_each_fact_appears_exactly_f_times_once_per_slice(freq):
    facts, sequences = 50, 400
    schedule = plan(facts, freq, sequences, seed=0)
    assert np.array_equal(np.bincount(schedule.fact, minlength=facts), np.full(facts, freq))
    slice_of = (schedule.sequence * freq) // sequences
    assert np.array_equal(slice_of, schedule.exposure)
    assert np.all(np.diff(schedule.sequence) >= 0)


def test_placement_is_a_pure_function_of_seed_f_k_and_budget():
    a, b = plan(30, 8, 500, seed=1), plan(30, 8, 500, seed=1)
    c = plan(30, 8, 500, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip((a.sequence, a.fact), (b.sequence, b.fact)))
    assert not np.array_equal(a.fact, c.fact)


def test_no_injection_at_f_zero_and_too_many_exposures_refused():
    assert len(plan(10, 0, 100, seed=0).sequence) == 0
    with pytest.raises(ConfigError, match="infusion.freq"):
        plan(10, 101, 100, seed=0)


def _stream(cfg):
    experiment = prepare(cfg)
    dataset = experiment.datamodule.dataset
    return dataset, [dataset[i] for i in range(experiment.budget.sequences)]


def test_same_seed_same_stream_and_background_is_the_same_at_every_f(make_cfg):
    dataset, stream = _stream(make_cfg("infusion.freq=4"))
    _, again = _stream(make_cfg("infusion.freq=4"))
    _, control = _stream(make_cfg("infusion.freq=0"))
    for x, y in zip(stream, again):
        assert np.array_equal(x["input_ids"], y["input_ids"])
    spliced = 0
    for x, y in zip(stream, control):
        used = int(x["injected"])
        spliced += used
        assert np.array_equal(x["input_ids"][used:], y["input_ids"][used:])
        assert len(x["input_ids"]) == len(y["input_ids"]) == dataset.seq_len
    assert spliced == dataset.injected_tokens > 0


def test_injected_text_appears_in_the_stream_f_times(make_cfg):
    experiment = prepare(make_cfg("infusion.freq=3"))
    dataset = experiment.datamodule.dataset
    text = "".join(
        experiment.tokenizer.decode(dataset[i]["input_ids"][: int(dataset[i]["injected"])])
        for i in range(experiment.budget.sequences)
    )
    for fact in experiment.knowledge.facts:
        assert text.count(render(experiment.knowledge, fact, 0, experiment.infusion)) == 3


def test_injection_that_does_not_fit_the_budget_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="lower infusion.freq or knowledge.num_facts, or raise tokens"):
        prepare(make_cfg("infusion.freq=120"))


@pytest.mark.parametrize(
    "override, key",
    [
        ("infusion.freq=-1", "infusion.freq"),
        ("knowledge.num_facts=0", "knowledge.num_facts"),
        ("tokens=100", "tokens"),
        ("infusion.format=poem", "infusion.format"),
    ],
)
def test_bad_values_name_their_key(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        prepare(make_cfg(override))
