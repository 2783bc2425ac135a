"""An item's question as token ids, exactly as the training stream holds it: each context document and the
question EOS-led, and the answer tokenized jointly with the question (a BPE merge may cross the space)."""

from __future__ import annotations

from collections.abc import Sequence

from kinject.data.tokenizer import encode_documents
from kinject.knowledge.facts import Item


def context_tokens(tokenizer, item: Item) -> list[int]:
    """The item's context documents, each EOS-led as in training, then the EOS that leads its question."""
    lead = [int(t) for doc in encode_documents(tokenizer, item.context) for t in doc] if item.context else []
    return [*lead, tokenizer.eos_token_id]


def answer_start(offsets: Sequence[tuple[int, int]], prompt: str) -> int:
    """Index of the first option token in `prompt + " " + option` tokenized jointly, as training saw it."""
    return next(i for i, (start, _) in enumerate(offsets) if start >= len(prompt))
