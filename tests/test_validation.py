"""Every user-set value: a wrong type or an out-of-range value is refused, naming the key and what it takes."""

from __future__ import annotations

import pickle

import pytest
from omegaconf import OmegaConf, open_dict

from kinject.errors import ConfigError
from kinject.evaluation.suites import SUITES
from kinject.run.experiment import prepare
from kinject.validation import RULES, Rule, markdown, validate
from tests.conftest import ROOT


def _bad_values(rule: Rule) -> list[object]:
    if rule.choices:
        return [12345, "no_such_choice"]
    values: list[object] = ["abc", True]
    if rule.kind is int:
        values.append(1.5)
    if rule.low is not None:
        values.append(rule.low if rule.low_open else rule.low - 1)
    if rule.high is not None:
        values.append(rule.high + 1)
    return values


@pytest.mark.parametrize("rule", RULES, ids=[rule.key for rule in RULES])
def test_each_key_refuses_a_wrong_type_and_an_out_of_range_value(make_cfg, rule):
    cfg = make_cfg("data=local", "data.files=unused")
    validate(cfg)
    for value in _bad_values(rule):
        with open_dict(cfg):
            OmegaConf.update(cfg, rule.key, value, force_add=True)
        with pytest.raises(ConfigError, match=rf"^{rule.key.replace('.', '[.]')}: expected {rule.expected()}"):
            validate(cfg)


def test_prepare_checks_values_before_building_anything(make_cfg, monkeypatch):
    import kinject.run.experiment as experiment

    monkeypatch.setattr(experiment, "World", lambda *a: pytest.fail("built the world before validating"))
    with pytest.raises(ConfigError, match="optim.lr: expected a number > 0"):
        prepare(make_cfg("optim.lr=0"))


def test_a_metric_list_is_checked_item_by_item(make_cfg):
    validate(make_cfg("metric=[memorization/acc_token,heldout/loss]"))
    with pytest.raises(ConfigError, match="metric: expected one of"):
        validate(make_cfg("metric=[memorization/acc_token,heldout/los]"))


def test_the_readme_table_is_the_rules():
    assert markdown() in (ROOT / "docs" / "bad-input.md").read_text()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ("data.batch_size=6", "data.micro_batch_size=4"),
            r"data\.batch_size: expected a multiple of data\.micro_batch_size x devices",
        ),
        (("model.vocab_size=100",), r"model\.vocab_size: expected at least the tokenizer's \d+ tokens"),
        (("model.num_heads=3",), r"model\.num_heads: expected heads dividing hidden_size"),
        (("knowledge.include=[]",), r"knowledge\.include: expected relation names among"),
    ],
)
def test_values_that_must_agree_with_each_other(make_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        prepare(make_cfg(*overrides))


def test_evaluate_names_a_missing_checkpoint(tmp_path):
    from kinject.cli.evaluate import evaluate

    with pytest.raises(ConfigError, match=r"ckpt: expected a checkpoint file from train\.py or a folder"):
        evaluate(tmp_path / "nope.ckpt")


def test_a_new_suite_is_one_registered_function_and_its_name(make_cfg, monkeypatch):
    """The house rule: a suite registered by name is accepted by eval.suites and metric, and is scored."""
    monkeypatch.setitem(SUITES._entries, "first_five", lambda inputs: SUITES.get("memorization")(inputs)[:5])
    cfg = make_cfg("eval.suites=[memorization,first_five]", "metric=first_five/acc_token")
    assert len(prepare(cfg).evaluator.suites["first_five"].items) == 5
    with pytest.raises(
        ConfigError,
        match="eval.suites: expected one of memorization, memorization_in_sequence, extraction, question, "
        "background, background_extraction, recall, recall_in_sequence, background_recall, first_five",
    ):
        validate(make_cfg("eval.suites=[memorization,no_such_suite]"))


def test_a_config_error_survives_the_trip_back_from_a_parallel_sweep_worker():
    """joblib's workers return a failed job's error pickled; unpickling it used to fail and stop the sweep."""
    error = ConfigError("data.seq_len", "room for the 265 injected tokens", 128, hint="raise data.seq_len")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ConfigError and str(again) == str(error) and again.key == "data.seq_len"
