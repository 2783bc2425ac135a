"""How far the synthetic world's knowledge load goes: for K facts, the time to mint them and build a run
(tokenizer cached), their information (sum of log2 of each relation's object count), that load against a
capacity of 2 bits per non-embedding parameter for each small model, and the largest F a budget admits.

    python benchmarks/knowledge_load.py [--facts 120 1000 5000 20000] [--tokens 1000000]
"""

from __future__ import annotations

import argparse
import math
import time

from _common import config

from kinject.run.experiment import prepare
from kinject.training.model import build, count_params

MODELS = ("xxs", "xs", "tiny", "small")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--facts", type=int, nargs="+", default=[120, 1000, 5000, 20000])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    args, _ = parser.parse_known_args()
    capacity = {}
    for name in MODELS:
        experiment = prepare(config(f"model={name}", "infusion.freq=1"))
        capacity[name] = 2 * count_params(build(experiment.model, experiment.vocab_size, device="meta"))[1]
    print(
        f"| K | build s | subjects | bits | {' | '.join(f'load / 2 bit x N ({m})' for m in MODELS)} | "
        f"tokens/fact | max F at {args.tokens:,} tokens |"
    )
    print("|---|---|---|---|" + "---|" * len(MODELS) + "---|---|")
    for facts in args.facts:
        start = time.perf_counter()
        experiment = prepare(
            config(f"knowledge.num_facts={facts}", "infusion.freq=1", f"tokens={args.tokens}", "infusion.max_share=1.0")
        )
        seconds = time.perf_counter() - start
        knowledge = experiment.knowledge
        bits = sum(math.log2(len(set(knowledge.candidates[f.relation]))) for f in knowledge.facts)
        per_fact = experiment.summary()["mean_fact_tokens"]
        max_f = int(0.9 * experiment.budget.tokens_trained / (facts * per_fact))
        loads = " | ".join(f"{bits / capacity[m]:.2f}" for m in MODELS)
        print(
            f"| {facts:,} | {seconds:.1f} | {len({f.subject for f in knowledge.facts}):,} | {bits:,.0f} | {loads} | "
            f"{per_fact:.1f} | {max_f} |"
        )


if __name__ == "__main__":
    main()
