"""Memorization as 4-way multiple choice scored by likelihood, and held-out LM loss.

Each option is scored as the log-likelihood of its tokens given the question, with question and
option tokenized jointly (as training saw them), after the item's context documents if it has any,
each EOS-led as in the training stream. All options of a batch of items go through the
model in one forward pass. Accuracy is reported three ways: summed log-likelihood, per-token mean
(the paper's perplexity choice) and per-character mean; per-item outcomes are kept for the fits.
Under torch.distributed each rank scores a slice (kinject.evaluation.sharding). Suites answered by
greedy decoding instead (recall) are scored by kinject.evaluation.recall.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kinject.data.tokenizer import encode_documents
from kinject.evaluation.prompts import answer_start, context_tokens
from kinject.evaluation.recall import SCORES as RECALL_SCORES
from kinject.evaluation.recall import encode_prompts, greedy, outcomes
from kinject.evaluation.sharding import gathered, share
from kinject.evaluation.suites import RECALL
from kinject.knowledge.facts import OPTIONS, Item

SCORINGS = ("sum", "token", "char")
UNBOUNDED = ("gold_logprob", "margin", "gold_rank")
TRADEOFF = "tradeoff/score"


@dataclass(frozen=True)
class EncodedItems:
    items: list[Item]
    ids: list[list[int]]  # one row per option, items x options
    option_start: list[int]  # index of the first option token in each row
    chars: np.ndarray  # option length in characters, items x options


def encode_items(tokenizer, items: Sequence[Item]) -> EncodedItems:
    ids, starts, chars = [], [], []
    for item in items:
        texts = [f"{item.prompt} {option}" for option in item.options]
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        lead = context_tokens(tokenizer, item)
        for row, offsets in zip(encoded["input_ids"], encoded["offset_mapping"]):
            ids.append([*lead, *row])
            starts.append(len(lead) + answer_start(offsets, item.prompt))
        chars.append([len(option) + 1 for option in item.options])
    return EncodedItems(list(items), ids, starts, np.array(chars, dtype=np.float64).reshape(len(items), -1))


@torch.no_grad()
def option_logprobs(model, encoded: EncodedItems, batch_items: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-likelihood and token count of every option, items x options (all ranks take part)."""
    n_options = len(encoded.items[0].options) if encoded.items else 0
    shape = (len(encoded.items), n_options)
    if not encoded.items:
        return np.zeros(shape), np.zeros(shape)
    items, real = share(len(encoded.items))
    rows = (items[:, None] * n_options + np.arange(n_options)).ravel()
    sums = _option_logprobs(
        model, [encoded.ids[r] for r in rows], [encoded.option_start[r] for r in rows], batch_items * n_options, pad_id
    )
    sums = gathered(sums.reshape(-1, n_options)[:real])
    counts = np.array([len(row) for row in encoded.ids], dtype=np.float64) - encoded.option_start
    return sums.reshape(shape), counts.reshape(shape)


def _option_logprobs(model, ids: list[list[int]], option_start: list[int], rows: int, pad_id: int) -> np.ndarray:
    """Summed log-likelihood of each row's option tokens. The sums stay on the device until the last batch (one
    host sync per suite), and logits are computed only from the first option token of a batch on: the prompts'
    logits, most of a forward's vocabulary projection, are never needed."""
    device = next(model.parameters()).device
    sums = []
    for lo in range(0, len(ids), rows):
        batch = ids[lo : lo + rows]
        first = min(option_start[lo : lo + rows])
        width = max(map(len, batch))
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        for i, row in enumerate(batch):
            input_ids[i, : len(row)] = torch.tensor(row)
        input_ids = input_ids.to(device)
        starts = torch.tensor(option_start[lo : lo + rows], device=device)
        lengths = torch.tensor([len(r) for r in batch], device=device)
        logits = model(input_ids=input_ids, use_cache=False, logits_to_keep=width - first + 1).logits.float()
        targets = input_ids[:, first:, None]
        logp = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets).squeeze(-1)
        position = torch.arange(first, width, device=device)[None, :]
        mask = (position >= starts[:, None]) & (position < lengths[:, None])
        sums.append((logp * mask).sum(-1))
    return torch.cat(sums).double().cpu().numpy()


@dataclass
class Evaluation:
    metrics: dict[str, float]
    items: dict[str, dict[str, list]]

    def per_relation(self, scoring: str = "token") -> dict[str, dict[str, float]]:
        """Accuracy of each suite broken down by relation (of a recall suite: its exact answers)."""
        table: dict[str, dict[str, float]] = {}
        for suite, record in self.items.items():
            correct = np.array(record["exact"] if suite in RECALL else record[f"correct_{scoring}"])
            relations = np.array(record["relation"])
            table[suite] = {str(r): float(correct[relations == r].mean()) for r in sorted(set(record["relation"]))}
        return table


def scores_without_ceiling(score: np.ndarray, gold: np.ndarray) -> dict[str, np.ndarray]:
    """Per item, from per-token log-likelihoods (items x options): the gold option's (`gold_logprob`), its lead
    over the best distractor (`margin`, negative when wrong) and its rank (`gold_rank`, 1 = chosen). Accuracy
    sits at 1.0 once every gold option wins; these keep moving, so a decline past saturation shows."""
    rows = np.arange(len(gold))
    gold_score = score[rows, gold]
    others = score.copy()
    others[rows, gold] = -np.inf
    ranks = 1.0 + (score > gold_score[:, None]).sum(axis=1)
    return dict(zip(UNBOUNDED, (gold_score, gold_score - others.max(axis=1), ranks)))


class Evaluator:
    """Scores fixed suites of items (memorization, extraction, question, background) and held-out text, and
    the trade-off between specialization and forgetting: `tradeoff_weight` x memorization accuracy plus the
    rest x background accuracy (per-token scoring), when both suites are scored.

    `heldout_batch` bounds the memory of the held-out loss: its logits (sequences x seq_len x vocab)
    are the largest tensor of an evaluation, so it goes through a few sequences at a time.
    """

    def __init__(
        self,
        tokenizer,
        suites: Mapping[str, Sequence[Item]],
        heldout: torch.Tensor,
        batch_items: int = 64,
        heldout_batch: int = 4,
        tradeoff_weight: float = 0.5,
    ):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.eos_token_id
        present = {name: items for name, items in suites.items() if items}
        self.suites = {name: encode_items(tokenizer, items) for name, items in present.items() if name not in RECALL}
        self.recall = {name: encode_prompts(tokenizer, items) for name, items in present.items() if name in RECALL}
        self.heldout = heldout
        self.batch_items = batch_items
        self.heldout_batch = heldout_batch
        self.tradeoff_weight = tradeoff_weight

    @torch.no_grad()
    def __call__(self, model, precision: AbstractContextManager | None = None) -> Evaluation:
        """Every rank calls this together under torch.distributed; `precision` is the run's autocast."""
        with precision or contextlib.nullcontext():
            return self._evaluate(model)

    def _evaluate(self, model) -> Evaluation:
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        items: dict[str, dict[str, list]] = {}
        for name, encoded in self.suites.items():
            logprob, tokens = option_logprobs(model, encoded, self.batch_items, self.pad_id)
            gold = np.array([item.gold for item in encoded.items])
            scores = {"sum": logprob, "token": logprob / np.maximum(tokens, 1), "char": logprob / encoded.chars}
            record: dict[str, list] = {
                "fact_id": [item.fact_id for item in encoded.items],
                "relation": [item.relation for item in encoded.items],
                "gold": gold.tolist(),
                "logprob": np.round(logprob, 4).tolist(),
            }
            for scoring, score in scores.items():
                correct = (score.argmax(axis=1) == gold).astype(int)
                record[f"correct_{scoring}"] = correct.tolist()
                metrics[f"{name}/acc_{scoring}"] = float(correct.mean())
            unbounded = scores_without_ceiling(scores["token"], gold)
            for score, values in unbounded.items():
                record[score] = np.round(values, 4).tolist()
                metrics[f"{name}/{score}"] = float(values.mean())
            metrics[f"{name}/n_items"] = len(encoded.items)
            items[name] = record
        for name, prompts in self.recall.items():
            generated = greedy(model, prompts.prompts, prompts.new_tokens, self.batch_items * OPTIONS, self.pad_id)
            record = {
                "fact_id": [item.fact_id for item in prompts.items],
                "relation": [item.relation for item in prompts.items],
                **outcomes(self.tokenizer, prompts, generated),
            }
            for score in RECALL_SCORES:
                metrics[f"{name}/{score}"] = float(np.mean(record[score]))
            metrics[f"{name}/n_items"] = len(prompts.items)
            items[name] = record
        if len(self.heldout):
            metrics["heldout/loss"] = self.heldout_loss(model)
        if {"memorization", "background"} <= self.suites.keys():
            w = self.tradeoff_weight
            metrics[TRADEOFF] = w * metrics["memorization/acc_token"] + (1 - w) * metrics["background/acc_token"]
        model.train(was_training)
        return Evaluation(metrics, items)

    @torch.no_grad()
    def heldout_loss(self, model) -> float:
        """Mean next-token loss over the held-out sequences, `heldout_batch` sequences per forward pass."""
        device = next(model.parameters()).device
        rows, real = share(len(self.heldout))
        losses = []
        for lo in range(0, len(rows), self.heldout_batch):
            batch = self.heldout[torch.from_numpy(rows[lo : lo + self.heldout_batch])].to(device)
            logits = model(input_ids=batch, use_cache=False).logits.float()
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="none"
            )
            losses.append(loss.view(len(batch), -1).sum(-1))
        total = gathered(torch.cat(losses).double().cpu().numpy()[:real]).sum()
        return float(total / (len(self.heldout) * (self.heldout.size(1) - 1)))


def heldout_sequences(tokenizer, documents: Iterable[str], seq_len: int, count: int) -> torch.Tensor:
    """The first `count` sequences of held-out text, reading no more of it than that takes."""
    if count <= 0:
        return torch.zeros(0, seq_len, dtype=torch.long)
    texts = iter(documents)
    parts: list[np.ndarray] = []
    have = 0
    while have < count * seq_len and (batch := list(itertools.islice(texts, 256))):
        parts.extend(encode_documents(tokenizer, batch))
        have = sum(map(len, parts))
    usable = min(count, have // seq_len)
    if usable == 0:
        return torch.zeros(0, seq_len, dtype=torch.long)
    stream = np.concatenate(parts)
    return torch.from_numpy(stream[: usable * seq_len].astype(np.int64)).view(usable, seq_len)
