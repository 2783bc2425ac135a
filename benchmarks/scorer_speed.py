"""Memorization scorer: all options of a batch of items in one forward pass, against one pass per option, and
against the scorer as it was before (a KV cache built in every forward, logits of every position, three host
syncs per batch); items/s per `eval.batch_items`; then what the scores without a ceiling (gold
log-probability, margin, rank) add to a whole evaluation.

    python benchmarks/scorer_speed.py [model=small] [knowledge.num_facts=...]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from _common import best_of, config
from omegaconf import OmegaConf

from kinject.evaluation import scoring
from kinject.evaluation.scoring import EncodedItems, option_logprobs
from kinject.run.experiment import prepare
from kinject.training.lightning_module import CausalLM


@torch.no_grad()
def one_pass_per_option(model, encoded: EncodedItems) -> None:
    for ids, start in zip(encoded.ids, encoded.option_start):
        x = torch.tensor([ids])
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
        logp[torch.arange(start - 1, len(ids) - 1), x[0, start:]].sum()


@torch.no_grad()
def before(model, encoded: EncodedItems, batch_items: int) -> np.ndarray:
    """The scorer before: the model's KV cache on, logits of every position, sums and counts copied to the host
    after each batch and the batch width read back from the device."""
    model.config.use_cache = True
    ids, option_start, rows = encoded.ids, encoded.option_start, batch_items * len(encoded.items[0].options)
    sums, counts = [], []
    for lo in range(0, len(ids), rows):
        batch = ids[lo : lo + rows]
        starts = torch.tensor(option_start[lo : lo + rows])
        lengths = torch.tensor([len(r) for r in batch])
        width = int(lengths.max())
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            input_ids[i, : len(row)] = torch.tensor(row)
        logits = model(input_ids=input_ids).logits.float()
        logp = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        position = torch.arange(1, width)[None, :]
        mask = (position >= starts[:, None]) & (position < lengths[:, None])
        sums.append((logp * mask).sum(-1).cpu())
        counts.append(mask.sum(-1).cpu())
    model.config.use_cache = False
    return torch.cat(sums).double().numpy()


def items_per_s(runs: dict[str, Callable[[], object]], n: int, repeats: int = 5) -> dict[str, float]:
    """Items/s of each run, the best of `repeats`, the runs taking turns (a shared CPU's load hits both alike)."""
    return {name: n / seconds for name, seconds in best_of(runs, repeats).items()}


def main() -> None:
    cfg = config()
    experiment = prepare(cfg)
    model = CausalLM(OmegaConf.to_container(cfg.model, resolve=True), experiment.vocab_size).model.eval()
    encoded = experiment.evaluator.suites["memorization"]
    n = len(encoded.items)
    threads = torch.get_num_threads()
    print(f"memorization suite: {n} items x 4 options, model {cfg.model.name}, {threads} threads")
    old = before(model, encoded, 64)
    new, _ = option_logprobs(model, encoded, 64, 0)
    print(f"largest difference of a summed log-likelihood, before against now: {np.abs(old - new.ravel()).max():.2e}")

    naive = items_per_s({"naive": lambda: one_pass_per_option(model, encoded)}, n, repeats=1)["naive"]
    print(f"{'one forward pass per option':38s}: {naive:8.1f} items/s")
    for batch_items in (16, 64, 256):
        rates = items_per_s(
            {
                "before": lambda b=batch_items: before(model, encoded, b),
                "now": lambda b=batch_items: option_logprobs(model, encoded, b, 0),
            },
            n,
        )
        was, now = rates["before"], rates["now"]
        print(
            f"batched, eval.batch_items={batch_items:<4d}         : {was:8.1f} items/s before, {now:8.1f} now "
            f"({now / was:.2f}x; {now / naive:.1f}x one pass per option)"
        )

    whole = {}
    unbounded = scoring.scores_without_ceiling
    for name, scores in (("without", lambda score, gold: {}), ("with", unbounded)):
        scoring.scores_without_ceiling = scores
        experiment.evaluator(model)
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            experiment.evaluator(model)
            runs.append(time.perf_counter() - start)
        whole[name] = min(runs)
    scoring.scores_without_ceiling = unbounded
    change = 100 * (whole["with"] / whole["without"] - 1)
    print(
        f"whole evaluation ({', '.join(experiment.evaluator.suites)}, held-out loss): {whole['without']:.3f} s "
        f"without, {whole['with']:.3f} s with the unbounded scores ({change:+.1f}%)"
    )


if __name__ == "__main__":
    main()
