"""Continued pretraining: a run that starts from an existing Llama checkpoint, `model.init` (a `save_pretrained`
folder or a hub id), instead of random weights.

The init decides the architecture, the tokenizer and the starting weights. `resolve` writes its architecture into
`model.*` and its tokenizer into `data.tokenizer` before anything is built, so the record, the fingerprint and every
checkpoint carry them and `evaluate.py` rebuilds the model without the init's weights; a size the model config sets
must be the init's. Only the weights are read again, by `load_weights`, and only when a run starts (rank 0 under
FSDP2; a resumed run reads its checkpoint instead).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, open_dict
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from kinject.errors import ConfigError
from kinject.training.model import ModelSpec

KEY = "model.init"
EXPECTED = "a save_pretrained folder or a hub id of a Llama-architecture causal LM"
# model.* key -> how it is read off the init's (transformers) config
ARCHITECTURE = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "tie_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "head_dim",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "rope_scaling",
)


def _looks_like_path(name: str) -> bool:
    """A hub id is `owner/name` (or `name`); anything else given is a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def read_config(name: str) -> PretrainedConfig:
    """The init's transformers config, or one line saying why it cannot be an init: no such folder, a folder
    without config.json, a hub id this machine cannot get (offline, gated, unknown), a non-Llama architecture."""
    path = Path(name).expanduser()
    if _looks_like_path(name):
        if not path.is_dir():
            raise ConfigError(KEY, EXPECTED, name, hint=f"no folder {path}")
        if not (path / "config.json").is_file():
            raise ConfigError(KEY, EXPECTED, name, hint=f"{path} holds no config.json (write it with save_pretrained)")
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        if model_type != "llama":
            raise ConfigError(KEY, EXPECTED, name, hint=f"its config.json says model_type {model_type!r}")
    try:
        config = AutoConfig.from_pretrained(str(path) if path.is_dir() else name)
    except (OSError, ValueError) as error:
        raise ConfigError(KEY, EXPECTED, name, hint=_unreachable(name, error)) from None
    if config.model_type != "llama":
        raise ConfigError(KEY, EXPECTED, name, hint=f"its config says model_type {config.model_type!r}")
    return config


def _unreachable(name: str, error: Exception) -> str:
    text = " ".join(str(error).split())
    if "gated" in text.lower():
        return f"the hub refused it: {name} is gated (accept its licence, then `hf auth login`), or give a local folder"
    first = text[:200] + ("..." if len(text) > 200 else "")
    return (
        f"the hub did not give it ({type(error).__name__}: {first}); offline, download it first "
        f"(`hf download {name} --local-dir DIR`) and give model.init=DIR"
    )


def architecture(config: PretrainedConfig) -> dict[str, Any]:
    """The init's architecture as `model.*` values."""
    rope = dict(config.rope_parameters or {})
    theta = float(rope.pop("rope_theta", 10000.0))
    scaling = None if rope.get("rope_type", "default") == "default" else {k: v for k, v in rope.items() if k != "type"}
    return {
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "num_kv_heads": config.num_key_value_heads,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_embeddings": bool(config.tie_word_embeddings),
        "rope_theta": theta,
        "rms_norm_eps": float(config.rms_norm_eps),
        "head_dim": config.head_dim,
        "hidden_act": config.hidden_act,
        "attention_bias": bool(config.attention_bias),
        "mlp_bias": bool(config.mlp_bias),
        "rope_scaling": scaling,
    }


def _same(given: Any, value: Any) -> bool:
    if isinstance(value, float) and isinstance(given, (int, float)) and not isinstance(given, bool):
        return math.isclose(float(given), value, rel_tol=1e-9)
    if isinstance(value, dict) and hasattr(given, "items"):
        return {k: v for k, v in given.items()} == value
    return bool(given == value)


def resolve(cfg: DictConfig) -> None:
    """With `model.init` set: the run's architecture and tokenizer become the init's, in `cfg` itself. A size the
    model config sets must equal the init's; `model.name` defaults to the init. Idempotent."""
    name = cfg.model.get("init")
    if name is None:
        return
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(KEY, EXPECTED, name)
    values = architecture(read_config(name))
    with open_dict(cfg):
        for key, value in values.items():
            given = cfg.model.get(key)
            if given is None:
                cfg.model[key] = value
            elif not _same(given, value):
                raise ConfigError(
                    f"model.{key}",
                    f"{value!r}, the init's (with model.init the architecture is {name}'s)",
                    given,
                    hint="leave the sizes to the init: model=init model.init=... reads them all from it",
                )
        if cfg.model.get("name") is None:
            cfg.model.name = name
        cfg.data.tokenizer.kind = "hub"
        cfg.data.tokenizer.name = name
    if int(cfg.data.seq_len) > int(values["max_position_embeddings"]):
        raise ConfigError(
            "data.seq_len",
            f"at most {values['max_position_embeddings']}, the init's max_position_embeddings",
            cfg.data.seq_len,
        )


def check_tokenizer_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """With `model.init` the tokenizer is the init's own (the vocabulary must match its embeddings): a tokenizer
    set on the command line is refused rather than silently replaced."""
    if cfg.model.get("init") is None:
        return
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "data.tokenizer" or key.startswith("data.tokenizer."):
            raise ConfigError(
                key,
                "no tokenizer setting with model.init: a run from an init uses the init's own tokenizer",
                value,
                hint=f"drop {override}",
            )


def load_weights(spec: ModelSpec, vocab_size: int) -> PreTrainedModel:
    """The init's weights in float32, in a model of `spec`'s architecture (the one `resolve` read from it); refused
    when the init lacks any of them (transformers would fill them at random)."""
    assert spec.init is not None
    path = Path(spec.init).expanduser()
    loaded: Any = AutoModelForCausalLM.from_pretrained(  # with output_loading_info: (model, info)
        str(path) if path.is_dir() else spec.init,
        config=spec.llama_config(vocab_size),
        dtype=torch.float32,
        attn_implementation="sdpa",
        output_loading_info=True,
    )
    model, info = cast(tuple[PreTrainedModel, dict[str, Any]], loaded)
    missing = sorted(info["missing_keys"])
    if missing:
        raise ConfigError(
            KEY,
            "a checkpoint holding every weight of its architecture",
            spec.init,
            hint=f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}",
        )
    model.train()  # from_pretrained leaves it in eval mode
    return model


def recorded(cfg: DictConfig, tokens_trained: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a run's record says of its start, for its `model` and `budget` sections: the init and its pretraining
    tokens (null: random weights, or not given), and the tokens of pretraining plus this run (the other choice of
    D in C = 6ND; fit_law's D is this run's tokens alone)."""
    init, pretrained = cfg.model.get("init"), cfg.model.get("pretrained_tokens")
    total = tokens_trained if init is None else None if pretrained is None else int(float(pretrained)) + tokens_trained
    return (
        {"init": init, "pretrained_tokens": None if pretrained is None else int(float(pretrained))},
        {"tokens_with_pretraining": total},
    )
