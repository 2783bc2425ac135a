"""Tokenizers: a small byte-level BPE trained on the corpus (fast tiny models), or a hub one.

A vocabulary of about 8k keeps tiny CPU models fast (32k makes them 4-10x slower). The trained
tokenizer is cached under a hash of everything it was trained from, so every run of a sweep, and
`evaluate.py` later, loads the very same one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from filelock import FileLock
from huggingface_hub.errors import GatedRepoError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from kinject.errors import ConfigError
from kinject.files import write_atomic

if TYPE_CHECKING:
    from transformers import SentencePieceBackend

EOS = "<|endoftext|>"


def train_bpe(texts: Sequence[str], vocab_size: int, cache_dir: str | os.PathLike) -> PreTrainedTokenizerFast:
    digest = hashlib.sha256(f"bpe-v1|{vocab_size}|{len(texts)}".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    path = Path(cache_dir) / "tokenizers" / digest.hexdigest()[:16] / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_suffix(".lock")):  # the ranks of a first run: one trains, the others wait and load
        if not path.exists():
            _train_bpe(texts, vocab_size, path)
    return load_file(path)


def _train_bpe(texts: Sequence[str], vocab_size: int, path: Path) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    write_atomic(path, lambda tmp: tokenizer.save(str(tmp)))


def load_file(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS, pad_token=EOS)


# Ungated copies of gated tokenizers (the same vocabulary), named when the hub refuses the original.
UNGATED = {"meta-llama/Llama-2-7b-hf": "NousResearch/Llama-2-7b-hf"}


def load_hub(name: str) -> PreTrainedTokenizerFast | SentencePieceBackend:
    """A pretrained tokenizer by hub name or local folder (offline users pass a folder). When the hub refuses it,
    one line says why (a gated repository, or no answer from the hub) and what to use instead."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as error:
        raise ConfigError(
            "data.tokenizer.name",
            "a tokenizer folder or a hub name this machine may download",
            name,
            hint=_refused(name, error),
        ) from None
    if tokenizer.eos_token_id is None:
        raise ConfigError("data.tokenizer.name", "a tokenizer with an end-of-sequence token", name)
    return tokenizer


def _refused(name: str, error: OSError) -> str:
    causes: list[BaseException] = [error]
    while causes[-1].__cause__ is not None or causes[-1].__context__ is not None:
        causes.append(cast(BaseException, causes[-1].__cause__ or causes[-1].__context__))  # not None: loop test
    copy = UNGATED.get(name)
    instead = (
        f"a local folder holding its files (data.tokenizer.name=/path/to/folder), an ungated copy of the same "
        f"vocabulary{f' (data.tokenizer.name={copy})' if copy else ''}, or data.tokenizer.kind=bpe"
    )
    if any(isinstance(cause, GatedRepoError) or "gated repo" in str(cause) for cause in causes):
        return (
            f"The hub refused it: {name} is a gated repository (accept its licence on huggingface.co, then "
            f"`hf auth login` on this machine). Or use {instead}"
        )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"The hub did not give it ({type(error).__name__}: {first_line}). Use {instead}"


def build(cfg, texts: Iterable[str], cache_dir: str) -> PreTrainedTokenizerFast | SentencePieceBackend:
    """The tokenizer a config asks for: `kind: bpe` trains on `texts`, `kind: hub` loads `name`."""
    if cfg.kind == "bpe":
        return train_bpe(list(texts), int(cfg.vocab_size), cache_dir)
    if cfg.kind == "hub":
        return load_hub(cfg.name)
    raise ConfigError("tokenizer.kind", "'bpe' or 'hub'", cfg.kind)


def encode_documents(tokenizer, texts: Sequence[str], batch: int = 1024) -> list[np.ndarray]:
    """Each text as [EOS] + tokens: EOS marks a document start, as in the evaluation prompts."""
    eos = tokenizer.eos_token_id
    out: list[np.ndarray] = []
    for i in range(0, len(texts), batch):
        encoded = tokenizer(list(texts[i : i + batch]), add_special_tokens=False)["input_ids"]
        out.extend(np.array([eos, *ids], dtype=np.int32) for ids in encoded)
    return out
