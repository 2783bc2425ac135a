"""Generative recall: batched greedy decoding, and what counts as an exact answer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kinject.cli import train as train_script
from kinject.cli.evaluate import evaluate
from kinject.evaluation.recall import greedy, outcomes
from kinject.run.experiment import prepare
from kinject.training.lightning_module import CausalLM

SUITES = "eval.suites=[memorization,recall,recall_in_sequence,background_recall]"


class Oracle(torch.nn.Module):
    """Greedy decoding by a model that learned exactly these token sequences: it continues each with its next
    token (EOS after the end), and any other prefix with `fallback`. Left padding is read from the mask."""

    def __init__(self, sequences: list[list[int]], eos: int, fallback: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.eos, self.fallback = eos, fallback
        self.next = {tuple(s[:i]): s[i] for s in sequences for i in range(1, len(s))}
        self.ends = {tuple(s) for s in sequences}

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, **_) -> torch.Tensor:
        rows = []
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prefix = [t for t, m in zip(row, mask) if m]
            for _ in range(max_new_tokens):
                key = tuple(prefix)
                prefix.append(self.next.get(key, self.eos if key in self.ends else self.fallback))
            rows.append(row + prefix[-max_new_tokens:])
        return torch.tensor(rows)


def _suite(make_cfg, name: str, *overrides: str):
    experiment = prepare(make_cfg(SUITES, *overrides))
    return experiment, experiment.evaluator.recall[name]


def test_batched_greedy_decoding_equals_generate_one_prompt_at_a_time(make_cfg):
    """Prompts of different lengths share a right-padded batch; each row's answer must be what transformers'
    own greedy generate gives for that prompt alone."""
    experiment, encoded = _suite(make_cfg, "recall_in_sequence", "infusion.packing=block", "infusion.freq=8")
    prompts = encoded.prompts[:8]
    assert len({len(p) for p in prompts}) > 3
    torch.manual_seed(0)
    model = CausalLM(OmegaConf.to_container(make_cfg().model, resolve=True), experiment.vocab_size).model.eval()
    batched = greedy(model, prompts, encoded.new_tokens, rows=3, pad_id=experiment.tokenizer.eos_token_id)
    for prompt, answer in zip(prompts, batched):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=encoded.new_tokens, do_sample=False)
        assert answer.tolist() == alone[0, len(prompt) :].tolist()


def test_a_model_that_knows_a_fact_answers_it_exactly(make_cfg):
    experiment, encoded = _suite(make_cfg, "recall")
    tokenizer = experiment.tokenizer
    known = list(range(0, len(encoded.items), 2))
    sequences = [encoded.prompts[i] + encoded.answers[i] for i in known]
    oracle = Oracle(sequences, tokenizer.eos_token_id, fallback=tokenizer.eos_token_id)
    generated = greedy(oracle, encoded.prompts, encoded.new_tokens, rows=7, pad_id=tokenizer.eos_token_id)
    result = outcomes(tokenizer, encoded, generated)
    assert result["exact"] == [int(i % 2 == 0) for i in range(len(encoded.items))]
    assert result["first_token"] == result["exact"]
    assert [result["answer"][i] for i in known] == [encoded.items[i].options[encoded.items[i].gold] for i in known]


def test_an_answer_that_runs_on_past_the_object_is_not_exact(make_cfg):
    """'Paris' is not an exact answer when the model goes on to 'Parisian': the object must end where a letter
    or digit does not follow. Its first token is still right."""
    experiment, encoded = _suite(make_cfg, "recall")
    tokenizer = experiment.tokenizer
    letter = tokenizer("x", add_special_tokens=False)["input_ids"][0]
    period = tokenizer(".", add_special_tokens=False)["input_ids"][0]
    eos = tokenizer.eos_token_id
    runs_on = Oracle([p + a + [letter] for p, a in zip(encoded.prompts[:4], encoded.answers[:4])], eos, eos)
    stops = Oracle([p + a + [period] for p, a in zip(encoded.prompts[:4], encoded.answers[:4])], eos, eos)
    first4 = SimpleNamespace(items=encoded.items[:4], prompts=encoded.prompts[:4], answers=encoded.answers[:4])
    for model, exact in ((runs_on, 0), (stops, 1)):
        generated = greedy(model, first4.prompts, encoded.new_tokens, rows=4, pad_id=tokenizer.eos_token_id)
        result = outcomes(tokenizer, first4, generated)
        assert result["exact"] == [exact] * 4
        assert result["first_token"] == [1] * 4


def test_a_model_that_knows_nothing_scores_zero_not_chance(make_cfg):
    experiment = prepare(make_cfg("eval.suites=[recall,background_recall]", "eval.heldout_sequences=0"))
    eos = experiment.tokenizer.eos_token_id
    evaluation = experiment.evaluator(Oracle([], eos, fallback=eos))
    assert evaluation.metrics["recall/exact"] == evaluation.metrics["background_recall/exact"] == 0.0
    assert evaluation.metrics["recall/first_token"] == 0.0
    assert evaluation.metrics["background_recall/n_items"] == 16
    assert evaluation.items["recall"]["answer"] == [""] * 24


@pytest.mark.slow
def test_training_records_recall_and_evaluate_rescores_it_to_the_same_answers(make_cfg):
    cfg = make_cfg("eval.suites=[memorization,recall,background_recall]", "eval.every_n_steps=16", "infusion.freq=16")
    train_script.train(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert all({"recall/exact", "recall/first_token"} <= point.keys() for point in record["curve"])
    assert [point["step"] for point in record["curve"]][-2:] == [16, 32]
    assert len(record["items"]["recall"]["answer"]) == 24
    assert record["metrics"]["recall/exact"] == np.mean(record["items"]["recall"]["exact"])

    again = evaluate(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", suites=["recall", "background_recall"])
    assert again.items["recall"] == record["items"]["recall"]
    assert again.items["background_recall"] == record["items"]["background_recall"]
