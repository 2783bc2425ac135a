"""What parts of a training step cost on this CPU: a forward and backward with and without the KV cache that
transformers builds by default, AdamW's step as a loop and fused, and a step with each decoder layer compiled.

    python benchmarks/step_costs.py [model=small] [data.seq_len=128] [data.micro_batch_size=16]

Runs take turns and the best of five is reported (a shared CPU's load hits each alike). The GPU figures come from
`kinject-gpucheck`.
"""

from __future__ import annotations

import time

import torch
from _common import best_of, config

from kinject.training.model import ModelSpec, build


def main() -> None:
    cfg = config("model=small")
    spec = ModelSpec.from_config({**cfg.model, "max_position_embeddings": int(cfg.data.seq_len)})
    vocab = spec.vocab_size or int(cfg.data.tokenizer.vocab_size)
    torch.manual_seed(0)
    model = build(spec, vocab)
    ids = torch.randint(0, vocab, (int(cfg.data.micro_batch_size), int(cfg.data.seq_len)))
    tokens = ids.numel()

    def step(use_cache: bool) -> None:
        model(input_ids=ids, labels=ids, use_cache=use_cache).loss.backward()

    print(f"model {spec.name} (vocab {vocab}), {tokens} tokens a micro-batch, {torch.get_num_threads()} threads")
    cache = best_of({"with": lambda: step(True), "without": lambda: step(False)})
    print(
        f"forward + backward: {tokens / cache['with']:,.0f} tokens/s with the KV cache, "
        f"{tokens / cache['without']:,.0f} without ({cache['with'] / cache['without']:.2f}x)"
    )

    step(False)
    params = list(model.parameters())
    loop, fused = (torch.optim.AdamW(params, lr=1e-9, fused=f) for f in (False, True))
    adam = best_of({"loop": loop.step, "fused": fused.step})
    print(
        f"AdamW step over {sum(p.numel() for p in params) / 1e6:.1f}M parameters: {1e3 * adam['loop']:.1f} ms as a "
        f"loop, {1e3 * adam['fused']:.1f} ms fused ({adam['loop'] / adam['fused']:.2f}x; train.py fuses on CUDA only)"
    )

    compiled = build(spec, vocab)
    compiled.load_state_dict(model.state_dict())
    for layer in compiled.model.layers:
        layer.compile()
    start = time.perf_counter()
    compiled(input_ids=ids, labels=ids).loss.backward()
    first = time.perf_counter() - start
    layers = best_of(
        {
            "eager": lambda: model(input_ids=ids, labels=ids).loss.backward(),
            "compiled": lambda: compiled(input_ids=ids, labels=ids).loss.backward(),
        }
    )
    print(
        f"forward + backward, each decoder layer compiled: {tokens / layers['compiled']:,.0f} tokens/s against "
        f"{tokens / layers['eager']:,.0f} eager ({layers['eager'] / layers['compiled']:.2f}x; the first step, "
        f"compiling, {first:.0f} s)"
    )


if __name__ == "__main__":
    main()
