"""Re-compute a run's evaluation (memorization, extraction, background, held-out loss), or export it.

    python evaluate.py ckpt=outputs/.../checkpoints/last.ckpt [out=eval.json] [device=cuda:0] [precision=32-true]
    python evaluate.py ckpt=outputs/.../checkpoints/last.ckpt export=hf/tiny-f16   # transformers folder
    python evaluate.py ckpt=hf/tiny-f16                                             # an exported folder
    python evaluate.py ckpt=... "suites=[memorization,memorization_in_sequence]"    # other suites than the run's
    python evaluate.py ckpt=HuggingFaceTB/SmolLM2-135M facts=outputs/DATE/TIME     # any causal LM, a run's facts

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

from kinject import CONF_DIR, results
from kinject.errors import ConfigError
from kinject.evaluation.lm_eval_tasks import write_tasks
from kinject.evaluation.scoring import Evaluation
from kinject.files import write_json_atomic
from kinject.run.experiment import Experiment, prepare
from kinject.run.folder import previous_config
from kinject.training.checkpoint import readable
from kinject.training.lightning_module import CausalLM

log = logging.getLogger("kinject")
CONFIG_FILE = "kinject_config.json"
LM_EVAL = "lm_eval"  # the run's suites as lm-eval tasks, beside an export


def load(
    path: str | Path, suites: list[str] | None = None, facts: str | Path | None = None
) -> tuple[Experiment, PreTrainedModel, dict[str, Any]]:
    """The run's experiment and model, from a Lightning checkpoint or an exported transformers folder;
    `suites` replaces the run's eval.suites. A sharded `last.ckpt` a kill left moved aside mid-swap is still found.
    With `facts` (a run), `path` is any causal LM (a save_pretrained folder or hub id), scored on that run's facts."""
    if facts is not None:
        return _load_foreign(str(path), facts, suites)
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
        raise ConfigError(
            "ckpt",
            f"a checkpoint file from train.py or a folder exported with {CONFIG_FILE}",
            str(path),
            hint="a model kinject did not train is scored on a run's facts: add facts=RUN_FOLDER"
            if path.is_dir()
            else "",
        )
    return _prepared(config, suites), model, config


def _prepared(config: dict[str, Any], suites: list[str] | None) -> Experiment:
    if suites is not None:
        config = {**config, "eval": {**config["eval"], "suites": list(suites)}}
    return prepare(OmegaConf.create(config))


def run_config(facts: str | Path) -> dict[str, Any]:
    """The resolved config of a kinject run: from its folder, its results.json, a checkpoint or an export."""
    path = Path(facts)
    record = path / results.FILENAME if path.is_dir() else path
    if record.name == results.FILENAME and record.is_file():
        return results.RunRecord.read(record)["config"]
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return json.loads((path / CONFIG_FILE).read_text())
    config = previous_config(path) if path.is_dir() else None
    if config is None and (readable(path) or path).is_file():
        try:
            config = torch.load(readable(path) or path, map_location="cpu", weights_only=True).get("kinject_config")
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError):
            config = None
    if config is None:
        raise ConfigError(
            "facts",
            "a kinject run whose world, knowledge and suites score the model: its folder, results.json, "
            "checkpoint or exported folder",
            str(facts),
        )
    return config


def _load_foreign(name: str, facts: str | Path, suites: list[str] | None) -> tuple[Experiment, Any, dict[str, Any]]:
    """Any causal LM on a run's facts: the run's world, knowledge, suites and precision, the model's own tokenizer
    (every item re-tokenized by it), the model's weights as saved."""
    run = run_config(facts)
    path = Path(name).expanduser()
    if path.is_file() or (readable(path) or path).is_file():
        raise ConfigError(
            "ckpt",
            "with facts=, a transformers model (a save_pretrained folder or a hub id)",
            name,
            hint="a checkpoint of train.py is scored on its own facts: drop facts=, or export it first (export=DIR)",
        )
    source = str(path) if path.is_dir() else name
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as error:
        first = " ".join(str(error).split())[:200]
        raise ConfigError(
            "ckpt", "a save_pretrained folder or a hub id of a causal LM", name, hint=f"{type(error).__name__}: {first}"
        ) from None
    config = {
        **run,
        "model": {**run["model"], "init": None, "vocab_size": None},
        "data": {**run["data"], "tokenizer": {**run["data"]["tokenizer"], "kind": "hub", "name": source}},
    }
    return _prepared(config, suites), model, config


def evaluate(
    path: str | Path,
    device: str = "auto",
    precision: str = "auto",
    suites: list[str] | None = None,
    facts: str | Path | None = None,
) -> Evaluation:
    """Scores a checkpoint on `device` (auto: the GPU if there is one) under `precision` (auto: the run's),
    on the run's suites or on `suites`; with `facts`, any causal LM on that run's facts."""
    experiment, model, config = load(path, suites, facts)
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
    """A `save_pretrained` model and tokenizer that plain transformers (and lm-evaluation-harness) load, and the
    run's multiple-choice suites as lm-eval tasks in `folder/lm_eval` (kinject.evaluation.lm_eval_tasks).
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
    write_tasks(experiment.evaluator.suites, experiment.tokenizer.eos_token, folder / LM_EVAL)
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
        evaluation = evaluate(cfg.ckpt, str(cfg.device), str(cfg.precision), suites, cfg.get("facts"))
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
