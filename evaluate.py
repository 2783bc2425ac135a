"""Re-compute a checkpoint's evaluation (memorization, extraction, background, held-out loss).

    python evaluate.py ckpt=outputs/.../checkpoints/last.ckpt [out=eval.json]

The checkpoint carries its run's resolved config, so the same world, knowledge, items and
tokenizer are rebuilt and the numbers match what training logged.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from kinject import results
from kinject.errors import ConfigError
from kinject.evaluation import Evaluation
from kinject.experiment import prepare
from kinject.module import CausalLM

log = logging.getLogger("kinject")


def evaluate(ckpt: str | Path) -> Evaluation:
    path = Path(ckpt)
    if not path.is_file():
        raise ConfigError("ckpt", "the path of a checkpoint file written by train.py", str(path))
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if "kinject_config" not in checkpoint:
        raise ConfigError("ckpt", "a checkpoint written by train.py (it carries the run's config)", str(path))
    cfg = OmegaConf.create(checkpoint["kinject_config"])
    experiment = prepare(cfg)
    module = CausalLM(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return experiment.evaluator(module.model)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        evaluation = evaluate(cfg.ckpt)
    except ConfigError as error:
        log.error("%s", error)
        sys.exit(2)
    for key, value in sorted(evaluation.metrics.items()):
        print(f"{key:28s} {value:.4f}")
    if cfg.out:
        path = results.write_json_atomic(cfg.out, {"ckpt": str(cfg.ckpt), "metrics": evaluation.metrics,
                                                   "items": evaluation.items})
        print(f"written: {path}")


if __name__ == "__main__":
    main()
