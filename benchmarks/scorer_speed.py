"""Memorization scorer: all options of a batch of items in one forward pass, against one pass per option;
then what the scores without a ceiling (gold log-probability, margin, rank) add to a whole evaluation.

    python benchmarks/scorer_speed.py [model=small] [knowledge.num_facts=...]
"""

from __future__ import annotations

import time

import torch
from _common import config
from omegaconf import OmegaConf

from kinject.evaluation import scoring
from kinject.evaluation.scoring import option_logprobs
from kinject.run.experiment import prepare
from kinject.training.lightning_module import CausalLM


@torch.no_grad()
def one_pass_per_option(model, encoded) -> None:
    for ids, start in zip(encoded.ids, encoded.option_start):
        x = torch.tensor([ids])
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
        logp[torch.arange(start - 1, len(ids) - 1), x[0, start:]].sum()


def main() -> None:
    cfg = config()
    experiment = prepare(cfg)
    model = CausalLM(OmegaConf.to_container(cfg.model, resolve=True), experiment.vocab_size).model.eval()
    encoded = experiment.evaluator.suites["memorization"]
    n = len(encoded.items)
    timings = {}
    for name, run in (
        ("batched (one pass per batch of items)", lambda: option_logprobs(model, encoded, 64, 0)),
        ("one forward pass per option", lambda: one_pass_per_option(model, encoded)),
    ):
        run()
        start = time.perf_counter()
        run()
        timings[name] = time.perf_counter() - start
        print(f"{name:38s}: {n / timings[name]:8.1f} items/s")
    batched, naive = timings.values()
    threads = torch.get_num_threads()
    print(f"speed-up: {naive / batched:.1f}x on {n} items x 4 options, model {cfg.model.name}, {threads} threads")

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
