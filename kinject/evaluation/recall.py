"""Generative recall: each fact asked as a multiple-choice item asks it, answered by the model itself.

Likelihood over four options tells which option the model prefers, not whether it would say the fact:
a model can rank the gold object first and still continue the prompt with something else. Here the
model continues the item's prompt (its context documents, EOS, the question, tokenized as the scorer
tokenizes them) by greedy decoding, for as many tokens as the suite's longest gold answer plus one.
Per item: `exact`, the answer starts with the object and the object ends there (end of text, EOS or a
character that is not a letter or digit follows); `first_token`, the first generated token is the
object's first token as training saw it. No options, so no chance floor: 0 for a fact never learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kinject.evaluation.prompts import answer_start, context_tokens
from kinject.evaluation.sharding import gathered, share
from kinject.knowledge.facts import Item

SCORES = ("exact", "first_token")


@dataclass(frozen=True)
class EncodedPrompts:
    items: list[Item]
    prompts: list[list[int]]  # context, EOS and the question's tokens
    answers: list[list[int]]  # the gold object's tokens, as they follow the question in training

    @property
    def new_tokens(self) -> int:
        return max(map(len, self.answers), default=0) + 1


def encode_prompts(tokenizer, items: Sequence[Item]) -> EncodedPrompts:
    prompts, answers = [], []
    for item in items:
        encoded = tokenizer(
            f"{item.prompt} {item.options[item.gold]}", add_special_tokens=False, return_offsets_mapping=True
        )
        first = answer_start(encoded["offset_mapping"], item.prompt)
        prompts.append([*context_tokens(tokenizer, item), *encoded["input_ids"][:first]])
        answers.append(list(encoded["input_ids"][first:]))
    return EncodedPrompts(list(items), prompts, answers)


@torch.no_grad()
def greedy(model, prompts: Sequence[Sequence[int]], new_tokens: int, rows: int, pad_id: int) -> np.ndarray:
    """The `new_tokens` tokens greedy decoding appends to each prompt, prompts x new_tokens: transformers'
    `generate` over left-padded batches of `rows` prompts, with a KV cache (a long context is read once). Every
    rank takes part with its slice and always generates all `new_tokens` (no early stop at EOS), so every rank
    runs the same number of forward passes. The generated ids stay on the device until the last batch."""
    device = next(model.parameters()).device
    mine, real = share(len(prompts))
    out = []
    for lo in range(0, len(mine), rows):
        batch = [prompts[i] for i in mine[lo : lo + rows]]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, prompt in enumerate(batch):
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad_id,
        )
        out.append(generated[:, width:])
    if not out:
        return np.zeros((0, new_tokens), dtype=np.int64)
    return gathered(torch.cat(out).cpu().numpy()[:real])


def outcomes(tokenizer, encoded: EncodedPrompts, generated: np.ndarray) -> dict[str, list]:
    """Per item: the answer's text (up to EOS), `exact` and `first_token` (0 or 1)."""
    eos = tokenizer.eos_token_id
    answers, exact, first = [], [], []
    for item, gold, row in zip(encoded.items, encoded.answers, generated, strict=True):
        tokens = [int(t) for t in row]
        text = tokenizer.decode(tokens[: tokens.index(eos)] if eos in tokens else tokens).lstrip()
        obj = item.options[item.gold]
        answers.append(text)
        exact.append(int(text.startswith(obj) and (len(text) == len(obj) or not text[len(obj)].isalnum())))
        first.append(int(tokens[0] == gold[0]))
    return {"answer": answers, "exact": exact, "first_token": first}
