"""The plan's memory estimate against the measured peak of training steps (the markdown table of docs/performance.md).

    python benchmarks/memory_check.py [--precision 32-true bf16-mixed] [--device cpu]

Each shape is measured with and without activation checkpointing (`kinject.training.memory.measure_peak_memory`:
on the CPU the profiler's allocation events, on a GPU the allocator's peak) and compared with `estimate_memory` for
one device. On a GPU (`--device cuda`) add the paper's sizes with `--shapes 137m:2048:4`.
"""

from __future__ import annotations

import argparse
import time

from omegaconf import OmegaConf

from kinject import CONF_DIR
from kinject.training.memory import estimate_memory, measure_peak_memory
from kinject.training.model import ModelSpec

# hidden x layers, heads / kv heads, vocabulary, sequence length, micro-batch
SHAPES = ("256x4:4/4:8192:256:4", "384x2:6/6:4096:512:2", "512x2:8/4:8192:256:2")


def spec_of(shape: str) -> tuple[ModelSpec, int, int]:
    """A shape `HIDDENxLAYERS:HEADS/KV:VOCAB:SEQ:MICRO`, or `SIZE:SEQ:MICRO` for a size of conf/model/."""
    parts = shape.split(":")
    if len(parts) == 3:
        model = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{parts[0]}.yaml"))
        return ModelSpec.from_config(model), int(parts[1]), int(parts[2])  # type: ignore[arg-type]  # a mapping
    size, heads, vocab, seq_len, micro = parts
    hidden, layers = (int(x) for x in size.split("x"))
    q, kv = (int(x) for x in heads.split("/"))
    spec = ModelSpec("", hidden, layers, q, kv, int(8 * hidden / 3) // 64 * 64, int(vocab), 4096)
    return spec, int(seq_len), int(micro)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(
        "| model (hidden x layers, heads/kv, vocab) | tokens | precision | checkpointing | measured MiB "
        "| estimated MiB | error | activations + loss: measured / estimated MiB | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        spec, seq_len, micro = spec_of(shape)
        vocab = spec.vocab_size or 0
        for precision in args.precision:
            for checkpointing in (False, True):
                started = time.perf_counter()
                measured = measure_peak_memory(
                    spec,
                    vocab,
                    seq_len,
                    micro,
                    precision=precision,
                    activation_checkpointing=checkpointing,
                    device=args.device,
                )
                seconds = time.perf_counter() - started
                estimate = estimate_memory(
                    spec,
                    vocab,
                    seq_len,
                    micro,
                    strategy="ddp",
                    precision=precision,
                    world_size=1,
                    activation_checkpointing=checkpointing,
                )
                step = measured - (estimate.params + estimate.grads + estimate.optimizer)
                print(
                    f"| {spec.name + ' ' if spec.name else ''}{spec.hidden_size}x{spec.num_layers}, "
                    f"{spec.num_heads}/{spec.num_kv_heads}, "
                    f"{vocab} | {micro} x {seq_len} | {precision} | {'on' if checkpointing else 'off'} | "
                    f"{measured / 2**20:.1f} | {estimate.total / 2**20:.1f} | {estimate.total / measured - 1:+.1%} | "
                    f"{step / 2**20:.1f} / {(estimate.activations + estimate.logits) / 2**20:.1f} | {seconds:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
