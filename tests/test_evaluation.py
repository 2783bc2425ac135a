from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kinject.evaluation.scoring import encode_items, option_logprobs
from kinject.run.experiment import prepare
from kinject.training.lightning_module import CausalLM


@torch.no_grad()
def _one_pass_per_option(model, encoded) -> np.ndarray:
    out = []
    for ids, start in zip(encoded.ids, encoded.option_start):
        x = torch.tensor([ids])
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
        out.append(float(logp[torch.arange(start - 1, len(ids) - 1), x[0, start:]].sum()))
    return np.array(out).reshape(len(encoded.items), -1)


def test_batched_scoring_equals_one_forward_pass_per_option(make_cfg):
    cfg = make_cfg()
    experiment = prepare(cfg)
    torch.manual_seed(0)
    model = CausalLM(OmegaConf.to_container(cfg.model, resolve=True), experiment.vocab_size).model.eval()
    encoded = experiment.evaluator.suites["memorization"]
    batched, counts = option_logprobs(model, encoded, batch_items=5, pad_id=0)
    assert np.allclose(batched, _one_pass_per_option(model, encoded), atol=1e-4)
    assert counts.tolist() == _option_tokens(experiment.tokenizer, encoded.items).tolist()


def _option_tokens(tokenizer, items) -> np.ndarray:
    """Tokens of each option, items x options, counted on the option alone (after its space): the joint
    tokenization of question and option splits at the space the same way."""
    return np.array(
        [[len(tokenizer(" " + o, add_special_tokens=False)["input_ids"]) for o in i.options] for i in items]
    )


class _SameLogits(torch.nn.Module):
    """Every position predicts the same distribution: a token's log-likelihood is log_softmax(weights)[token]."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = torch.nn.Parameter(weights)

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0, **kwargs) -> SimpleNamespace:
        keep = logits_to_keep or input_ids.size(1)
        return SimpleNamespace(logits=self.weights.expand(input_ids.size(0), keep, -1))


def test_the_headline_accuracy_divides_each_option_by_its_own_token_count(make_cfg):
    """Per-token scoring (memorization/acc_token) against summed scoring, on a model whose option scores are known
    in closed form: items where the two choose different options are scored as each rule says."""
    experiment = prepare(make_cfg("eval.suites=[memorization]"))
    evaluator = experiment.evaluator
    items = evaluator.suites["memorization"].items
    torch.manual_seed(0)
    weights = 3 * torch.randn(experiment.vocab_size)
    logp = torch.log_softmax(weights, -1).numpy()
    summed = np.array(
        [
            [logp[experiment.tokenizer(" " + o, add_special_tokens=False)["input_ids"]].sum() for o in i.options]
            for i in items
        ]
    )
    per_token = summed / _option_tokens(experiment.tokenizer, items)
    gold = np.array([item.gold for item in items])
    expected = {
        rule: (score.argmax(axis=1) == gold).astype(int) for rule, score in (("sum", summed), ("token", per_token))
    }
    assert (expected["sum"] != expected["token"]).any()  # the case that tells the two rules apart
    evaluation = evaluator(_SameLogits(weights))
    record = evaluation.items["memorization"]
    assert record["correct_sum"] == expected["sum"].tolist() and record["correct_token"] == expected["token"].tolist()
    assert evaluation.metrics["memorization/acc_token"] == pytest.approx(expected["token"].mean())


def test_option_tokens_are_exactly_the_option(make_cfg):
    experiment = prepare(make_cfg())
    tokenizer = experiment.tokenizer
    encoded = encode_items(tokenizer, experiment.evaluator.suites["memorization"].items[:6])
    for row, (ids, start) in enumerate(zip(encoded.ids, encoded.option_start)):
        item = encoded.items[row // 4]
        assert tokenizer.decode(ids[start:]) == " " + item.options[row % 4]
        assert tokenizer.decode(ids[1:start]) == item.prompt


class _LargestLogits(torch.nn.Module):
    """Wraps a model and records the largest logits tensor any forward pass produced."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.largest = 0

    def forward(self, input_ids, **kwargs):
        out = self.model(input_ids=input_ids, **kwargs)
        self.largest = max(self.largest, out.logits.numel())
        return out


def test_heldout_loss_memory_does_not_grow_with_the_number_of_sequences(make_cfg):
    experiment = prepare(make_cfg("eval.heldout_batch=2"))
    evaluator = experiment.evaluator
    model = _LargestLogits(
        CausalLM(OmegaConf.to_container(make_cfg().model, resolve=True), experiment.vocab_size).model
    )
    heldout = torch.randint(0, experiment.vocab_size, (12, 16))
    losses = {}
    for count in (3, 12):
        evaluator.heldout = heldout[:count]
        model.largest = 0
        losses[count] = evaluator.heldout_loss(model)
        assert model.largest == 2 * 16 * experiment.vocab_size, count
    with torch.no_grad():
        logits = model.model(input_ids=heldout[:3]).logits
    whole = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), heldout[:3, 1:].reshape(-1))
    assert losses[3] == pytest.approx(float(whole), rel=1e-5)


def test_scores_stay_on_the_device_until_a_suite_is_done(make_cfg, monkeypatch):
    """One copy to the host per suite and one for the held-out loss, however many batches: on a GPU each copy
    (or `.item()`, `.tolist()`, `int()`) waits for every forward pass queued before it."""
    experiment = prepare(make_cfg("eval.heldout_batch=1"))
    model = CausalLM(OmegaConf.to_container(make_cfg().model, resolve=True), experiment.vocab_size).model.eval()
    reads: list[str] = []
    for name in ("cpu", "item", "tolist", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor,
            name,
            lambda self, *a, _name=name, _original=original, **k: reads.append(_name) or _original(self, *a, **k),
        )
    encoded = experiment.evaluator.suites["memorization"]
    option_logprobs(model, encoded, batch_items=5, pad_id=0)
    assert len(encoded.items) > 3 * 5 and reads == ["cpu"]
    reads.clear()
    assert len(experiment.evaluator.heldout) > 1
    experiment.evaluator.heldout_loss(model)
    assert reads == ["cpu"]
