"""What each evaluation suite costs: seconds per evaluation of every suite alone (multiple choice and generative
recall side by side), on the run's config with a freshly built model, best of 3.

    python benchmarks/recall_cost.py [experiment=cpu_screen] [model=tiny] [infusion.packing=block] ...
"""

from __future__ import annotations

import torch
from _common import best_of, config
from omegaconf import OmegaConf

from kinject.evaluation.scoring import Evaluator
from kinject.run.experiment import prepare
from kinject.training.lightning_module import CausalLM

SUITES = (
    "memorization",
    "recall",
    "memorization_in_sequence",
    "recall_in_sequence",
    "extraction",
    "background",
    "background_recall",
)


def main() -> None:
    cfg = config(f"eval.suites=[{','.join(SUITES)}]", "eval.heldout_sequences=0")
    experiment = prepare(cfg)
    model = CausalLM(OmegaConf.to_container(cfg.model, resolve=True), experiment.vocab_size).model.eval()
    evaluator = experiment.evaluator
    every = {**evaluator.suites, **evaluator.recall}
    runs = {}
    for name in SUITES:
        if name in every:
            alone = Evaluator(experiment.tokenizer, {name: every[name].items}, torch.zeros(0, 1), cfg.eval.batch_items)
            runs[name] = lambda alone=alone: alone(model)
    seconds = best_of(runs, repeats=3)
    print(f"model {cfg.model.name}, {torch.get_num_threads()} thread(s), eval.batch_items={cfg.eval.batch_items}")
    print(f"{'suite':28s} {'items':>6s} {'s/evaluation':>13s} {'ms/item':>8s}")
    for name, s in seconds.items():
        n = len(every[name].items)
        print(f"{name:28s} {n:6d} {s:13.3f} {1000 * s / n:8.2f}")


if __name__ == "__main__":
    main()
