"""Parameter counts and training FLOPs per token of every model config (the markdown table of docs/performance.md).

    python benchmarks/ladder.py [--seq-len 2048]

Counted on meta-device models, so the 3B fits in no memory at all.
"""

from __future__ import annotations

import argparse

from _common import config

from kinject import CONF_DIR
from kinject.training.model import ModelSpec, build, count_params, flops_per_token


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--tokenizer-vocab", type=int, default=2655, help="vocabulary of models with vocab_size: null")
    args = parser.parse_args()
    names = sorted(
        (p.stem for p in (CONF_DIR / "model").glob("*.yaml")),
        key=lambda n: count_params(
            build(ModelSpec.from_config(config(f"model={n}").model), args.tokenizer_vocab, device="meta")
        )[0],
    )
    print(f"| model | hidden x layers | vocab | params | non-embedding | GFLOPs/token (train, seq {args.seq_len}) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        spec = ModelSpec.from_config(config(f"model={name}", "data.seq_len=" + str(args.seq_len)).model)
        vocab = spec.vocab_size or args.tokenizer_vocab
        total, non_embedding = count_params(build(spec, vocab, device="meta"))
        flops = flops_per_token(spec, vocab, args.seq_len)
        print(
            f"| {name} | {spec.hidden_size} x {spec.num_layers} | {vocab} | {total / 1e6:,.1f}M | "
            f"{non_embedding / 1e6:,.1f}M | {flops / 1e9:.3f} |"
        )


if __name__ == "__main__":
    main()
