"""Llama2-style decoders (RMSNorm, SwiGLU, RoPE, no bias) from transformers, built from config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric.utilities.throughput import measure_flops
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from kinject.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int | None
    max_position_embeddings: int
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    # set only by a checkpoint's architecture (model.init, kinject.init): the defaults are kinject's own models'
    rms_norm_eps: float = 1e-6
    head_dim: int | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # rope_parameters beyond the theta, as sorted pairs
    init: str | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ModelSpec:
        explicit_head = cfg.get("head_dim") is not None
        if (cfg["hidden_size"] % cfg["num_heads"] and not explicit_head) or cfg["num_heads"] % cfg["num_kv_heads"]:
            raise ConfigError(
                "model.num_heads",
                "heads dividing hidden_size and divisible by num_kv_heads",
                (cfg["hidden_size"], cfg["num_heads"], cfg["num_kv_heads"]),
            )
        values = {key: cfg[key] for key in cls.__dataclass_fields__ if key in cfg}
        if values.get("rope_scaling") is not None:
            values["rope_scaling"] = tuple(sorted(dict(values["rope_scaling"]).items()))
        return cls(**values)

    def llama_config(self, vocab_size: int) -> LlamaConfig:
        """A fresh config each call: transformers shares and mutates the one a model is built from. Without a KV
        cache: transformers would otherwise build one in every training and scoring forward (`export` turns it
        back on for generation)."""
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters={"rope_type": "default", **dict(self.rope_scaling or ()), "rope_theta": self.rope_theta},
            tie_word_embeddings=self.tie_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            head_dim=self.head_dim,
            hidden_act=self.hidden_act,
            attention_bias=self.attention_bias,
            mlp_bias=self.mlp_bias,
            use_cache=False,
        )


def resolve_vocab(spec: ModelSpec, tokenizer_vocab: int) -> int:
    """The model's vocabulary: the configured one (room to spare is fine) or the tokenizer's."""
    if spec.vocab_size is None:
        return tokenizer_vocab
    if spec.vocab_size < tokenizer_vocab:
        raise ConfigError("model.vocab_size", f"at least the tokenizer's {tokenizer_vocab} tokens", spec.vocab_size)
    return spec.vocab_size


def build(spec: ModelSpec, vocab_size: int, device: str | torch.device = "cpu") -> PreTrainedModel:
    with torch.device(device):
        return AutoModelForCausalLM.from_config(spec.llama_config(vocab_size), attn_implementation="sdpa")


def flops_per_token(spec: ModelSpec, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token, measured on a meta-device copy: costs no memory. With a KV
    cache: without one transformers reads the positions back to look for packed sequences, which a meta tensor
    cannot do (the cache adds no FLOPs)."""
    model = build(spec, vocab_size, device="meta")
    ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    flops = measure_flops(model, lambda: model(input_ids=ids, use_cache=True).logits, lambda logits: logits.sum())
    return flops / seq_len


def count_params(model: PreTrainedModel) -> tuple[int, int]:
    """(total, non-embedding): the scaling law's N is non-embedding by default."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    head = model.get_output_embeddings()
    if head is not None and head.weight is not model.get_input_embeddings().weight:
        embedding += head.weight.numel()
    return total, total - embedding
