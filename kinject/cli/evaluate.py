"""Re-compute a run's evaluation (memorization, extraction, background, held-out loss), or export it.

    python evaluate.py ckpt=outputs/.../checkpoints/last.ckpt [out=eval.json] [device=cuda:0] [precision=32-true]
    python evaluate.py ckpt=outputs/.../checkpoints/last.ckpt export=hf/tiny-f16   # transformers folder
    python evaluate.py ckpt=hf/tiny-f16                                             # an exported folder
    python evaluate.py ckpt=... "suites=[memorization,memorization_in_sequence]"    # other suites than the run's

A checkpoint (and an export) carries its run's resolved config, so the same world, knowledge,
items and tokenizer are rebuilt and the numbers match what training logged. A sharded (FSDP)
checkpoint folder is gathered into one model first. By default the model is scored on the GPU when
there is one, under the run's own precision.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning.fabric.utilities.load import _METADATA_FILENAME, _load_distributed_checkpoint
from lightning.pytorch.plugins.precision import MixedPrecision
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, PreTrainedModel

from kinject import CONF_DIR
from kinject.errors import ConfigError
from kinject.evaluation.scoring import Evaluation
from kinject.files import write_json_atomic
from kinject.run.experiment import Experiment, prepare
from kinject.training.checkpoint import readable
from kinject.training.lightning_module import CausalLM

log = logging.getLogger("kinject")
CONFIG_FILE = "kinject_config.json"


def load(path: str | Path, suites: list[str] | None = None) -> tuple[Experiment, PreTrainedModel, dict[str, Any]]:
    """The run's experiment and model, from a Lightning checkpoint or an exported transformers folder;
    `suites` replaces the run's eval.suites. A sharded `last.ckpt` a kill left moved aside mid-swap is still found."""
    path = readable(path) or Path(path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        config = json.loads((path / CONFIG_FILE).read_text())
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(path)
    elif path.is_file() or (path / _METADATA_FILENAME).is_file():
        try:
            checkpoint: dict[str, Any] = (
                torch.load(path, map_location="cpu", weights_only=True)
                if path.is_file()
                else _load_distributed_checkpoint(path)
            )
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            raise ConfigError(
                "ckpt",
                "a checkpoint written by train.py",
                str(path),
                hint=f"it could not be read as one ({type(error).__name__})",
            ) from None
        if "kinject_config" not in checkpoint:
            raise ConfigError("ckpt", "a checkpoint written by train.py (it carries the run's config)", str(path))
        config = checkpoint["kinject_config"]
        module = CausalLM(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
        model = module.model
    else:
        raise ConfigError("ckpt", f"a checkpoint file from train.py or a folder exported with {CONFIG_FILE}", str(path))
    if suites is not None:
        config = {**config, "eval": {**config["eval"], "suites": list(suites)}}
    return prepare(OmegaConf.create(config)), model, config


def evaluate(
    path: str | Path, device: str = "auto", precision: str = "auto", suites: list[str] | None = None
) -> Evaluation:
    """Scores a checkpoint on `device` (auto: the GPU if there is one) under `precision` (auto: the run's),
    on the run's suites or on `suites`."""
    experiment, model, config = load(path, suites)
    target = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    chosen = config["trainer"]["precision"] if precision == "auto" else precision
    return experiment.evaluator(
        model.to(target),  # type: ignore[arg-type]  # transformers' @wraps on PreTrainedModel.to hides the method
        precision_context(str(chosen), target),
    )


def precision_context(precision: str, device: torch.device) -> AbstractContextManager:
    """Autocast for Lightning's mixed precisions ("bf16-mixed", "16-mixed"), full precision otherwise."""
    if precision.endswith("-mixed"):
        return MixedPrecision(precision, device.type).forward_context()  # type: ignore[arg-type]  # it checks the name
    return contextlib.nullcontext()


def export(path: str | Path, folder: str | Path, overwrite: bool = False) -> Path:
    """A `save_pretrained` model and tokenizer that plain transformers (and lm-evaluation-harness) load.
    A folder that already holds files is refused unless `overwrite`."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise ConfigError(
            "export",
            "a new or empty folder",
            str(folder),
            hint="it already holds files: choose another folder, or add overwrite=true to replace them",
        )
    experiment, model, config = load(path)
    model.config.use_cache = True  # trained and scored without a KV cache; generation wants one
    model.save_pretrained(folder)
    experiment.tokenizer.save_pretrained(folder)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    return folder


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        if OmegaConf.is_missing(cfg, "ckpt"):
            raise ConfigError(
                "ckpt", "a checkpoint file or an exported folder, e.g. ckpt=outputs/DATE/TIME/checkpoints/last.ckpt"
            )
        if cfg.export:
            print(f"exported: {export(cfg.ckpt, cfg.export, bool(cfg.overwrite))}")
            return
        suites = None if cfg.suites is None else list(cfg.suites)
        evaluation = evaluate(cfg.ckpt, str(cfg.device), str(cfg.precision), suites)
    except ConfigError as error:
        log.error("%s", error)
        sys.exit(2)
    for key, value in sorted(evaluation.metrics.items()):
        print(f"{key:28s} {value:.4f}")
    if cfg.out:
        path = write_json_atomic(
            cfg.out, {"ckpt": str(cfg.ckpt), "metrics": evaluation.metrics, "items": evaluation.items}
        )
        print(f"written: {path}")


if __name__ == "__main__":
    main()
