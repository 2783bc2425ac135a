"""Instruments that can see a decline: scores without a ceiling, the question suite, the training loss on
injected and background tokens apart, the budget's split between them, and the trade-off score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kinject import results
from kinject.cli import train as train_script
from kinject.evaluation.scoring import scores_without_ceiling
from kinject.run.experiment import prepare
from kinject.training.lightning_module import split_loss


def test_scores_without_a_ceiling_keep_moving_where_accuracy_cannot():
    score = np.array([[-1.0, -2.0, -3.0, -4.0], [-3.0, -1.0, -2.0, -4.0], [-0.5, -3.0, -3.0, -3.0]])
    scores = scores_without_ceiling(score, np.array([0, 0, 0]))
    assert scores["gold_logprob"].tolist() == [-1.0, -3.0, -0.5]
    assert scores["margin"].tolist() == [1.0, -2.0, 2.5]  # items 1 and 3 are both right; the margin tells them apart
    assert scores["gold_rank"].tolist() == [1.0, 3.0, 1.0]


def test_the_question_suite_asks_the_same_items_as_a_question(make_cfg):
    suites = prepare(make_cfg()).evaluator.suites
    memorization, question = suites["memorization"].items, suites["question"].items
    assert all(q.prompt.startswith("Question: ") and q.prompt.endswith("Answer:") for q in question)
    assert [(q.fact_id, q.options, q.gold) for q in question] == [(m.fact_id, m.options, m.gold) for m in memorization]


def test_the_training_loss_splits_into_injected_and_background_tokens():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    split = split_loss(logits, ids, torch.tensor([3, 0]))
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    assert split["train/loss_injected"] == pytest.approx(float(per_token[0, :2].mean()))
    background = torch.cat([per_token[0, 2:], per_token[1]])
    assert split["train/loss_background"] == pytest.approx(float(background.mean()))
    assert (2 * split["train/loss_injected"] + 8 * split["train/loss_background"]) / 10 == pytest.approx(
        float(per_token.mean())
    )


def _background_trained(experiment) -> np.ndarray:
    dataset = experiment.datamodule.dataset
    items = [dataset[i] for i in range(experiment.budget.sequences)]
    return np.concatenate([item["input_ids"][int(item["injected"]) :].numpy() for item in items])


@pytest.mark.parametrize("mode", ["fixed_total", "fixed_background"])
def test_the_recorded_budget_split_is_what_the_loader_yields(make_cfg, mode):
    experiment = prepare(make_cfg("infusion.freq=8", f"infusion.budget={mode}"))
    dataset, budget = experiment.datamodule.dataset, experiment.budget
    injected = sum(int(dataset[i]["injected"]) for i in range(budget.sequences))
    summary = experiment.budget_summary()
    assert summary["mode"] == mode
    assert summary["injected_tokens"] == injected > 0
    assert (
        summary["background_tokens"]
        == len(_background_trained(experiment))
        == budget.sequences * budget.seq_len - injected
    )
    assert summary["tokens"] == summary["injected_tokens"] + summary["background_tokens"]


@pytest.mark.parametrize("knobs", [(), ("infusion.packing=block",), ("infusion.window=[0,0.5]",)])
def test_fixed_background_trains_the_same_background_at_every_f_and_grows_the_run(make_cfg, knobs):
    control = prepare(make_cfg("infusion.freq=0", "infusion.budget=fixed_background", *knobs))
    infused = prepare(make_cfg("infusion.freq=16", "infusion.budget=fixed_background", *knobs))
    background, grown = _background_trained(control), _background_trained(infused)
    assert np.array_equal(grown[: len(background)], background)  # element for element, in the same order
    assert 0 <= len(grown) - len(background) < infused.budget.tokens_per_step  # rounded up to a whole step
    assert infused.budget.steps > control.budget.steps == control.budget.background_steps
    displaced = _background_trained(prepare(make_cfg("infusion.freq=16")))
    assert len(displaced) < len(background)  # fixed_total: injection takes background's place


def _lanes_trained(experiment) -> dict[int, np.ndarray]:
    """The background each lane of a streamed corpus gave, in the order the lane was read."""
    dataset, stream = experiment.datamodule.dataset, experiment.datamodule.dataset.background
    read: dict[int, list[np.ndarray]] = {}
    for i in range(experiment.budget.sequences):
        item = dataset[i]
        read.setdefault(stream.locate(i)[0], []).append(item["input_ids"][int(item["injected"]) :].numpy())
    return {lane: np.concatenate(parts) for lane, parts in read.items()}


def test_fixed_background_reads_every_lane_of_a_streamed_corpus_the_same_at_every_f(make_cfg, fineweb):
    from tests.corpus_files import local

    control = prepare(local(make_cfg, fineweb[0], "infusion.freq=0", "infusion.budget=fixed_background"))
    infused = prepare(local(make_cfg, fineweb[0], "infusion.freq=8", "infusion.budget=fixed_background"))
    background, grown = _lanes_trained(control), _lanes_trained(infused)
    assert infused.budget.steps > control.budget.steps and background.keys() <= grown.keys()
    for lane, tokens in background.items():  # one stream per lane, nothing dropped or reordered, cut elsewhere
        shorter = min(len(tokens), len(grown[lane]))
        assert shorter > 0 and np.array_equal(grown[lane][:shorter], tokens[:shorter]), lane
    assert sum(map(len, grown.values())) >= sum(map(len, background.values()))
    summary = infused.budget_summary()
    assert summary["background_tokens"] == sum(map(len, grown.values()))
    assert (
        summary["injected_tokens"] + summary["background_tokens"] == infused.budget.sequences * infused.budget.seq_len
    )


@pytest.mark.slow
def test_a_run_records_the_tradeoff_and_both_training_losses(make_cfg):
    cfg = make_cfg("eval.tradeoff_weight=0.25")
    train_script.train(cfg)
    metrics = results.read(f"{cfg.paths.output_dir}/results.json")["metrics"]
    expected = 0.25 * metrics["memorization/acc_token"] + 0.75 * metrics["background/acc_token"]
    assert metrics["tradeoff/score"] == pytest.approx(expected)
    assert {"train/loss_injected", "train/loss_background", "memorization/margin", "question/acc_token"} <= set(metrics)
