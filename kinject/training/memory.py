"""Memory per GPU of a training step, known before a job starts (`kinject-plan`'s memory column), and the measured
peak it is checked against.

The estimate is the steady state of an accumulating step at its peak, the start of the backward pass: the weights,
the gradients held from the micro-batches before, the AdamW moments, every tensor the forward pass saved for the
backward pass, and the loss's tensors over the vocabulary. Activation bytes are counted from what autograd saves in
transformers' Llama modules with sdpa attention, read off the modules and checked with saved-tensor hooks on CPU
(fp32 and bf16 autocast); no KV cache (training forwards run with `use_cache=False`). Not counted: the CUDA context,
NCCL buffers, allocator fragmentation, and transient buffers smaller than the loss's (the plan keeps headroom).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from kinject.training.model import ModelSpec, build

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
STRATEGIES = ("ddp", "fsdp")

# Per token of a micro-batch, bytes over the vocabulary when the loss's backward starts: the fp32 log-softmax saved
# by cross-entropy, the fp32 gradient nll_loss hands back, and the gradient through the log-softmax. (The forward's
# logits and their fp32 copy, 2 + 4 + 4 bytes under autocast, are freed by then and never exceed this.)
LOSS_BYTES_PER_VOCAB = 12


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU."""

    params: float
    grads: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.logits


@dataclass(frozen=True)
class _Params:
    total: int
    layer: int  # one decoder layer
    root: int  # outside the decoder layers (embeddings, final norm, head): FSDP2's root unit
    cast: int  # weights of matmuls, which autocast casts: the layers' projections and the head


def _params(spec: ModelSpec, vocab_size: int) -> _Params:
    h, f = spec.hidden_size, spec.intermediate_size
    kv = spec.num_kv_heads * (h // spec.num_heads)
    layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
    root = vocab_size * h * (1 if spec.tie_embeddings else 2) + h
    return _Params(
        total=root + spec.num_layers * layer,
        layer=layer,
        root=root,
        cast=spec.num_layers * (layer - 2 * h) + vocab_size * h,
    )


def _layer_bytes_per_token(spec: ModelSpec, residual: int, compute: int, casts_per_linear: bool) -> float:
    """What one decoder layer saves for backward, per token. `residual`: bytes of the residual stream (4 with fp32
    weights, 2 with bf16 weights); `compute`: bytes of matmul outputs; `casts_per_linear`: autocast casts an fp32 input
    once per projection (q, k, v; gate, up), each copy saved."""
    h, f = spec.hidden_size, spec.intermediate_size
    kv = spec.num_kv_heads * (h // spec.num_heads)
    norms = 2 * (4 * h + residual * h)  # RMSNorm: its input in fp32 and the normalized tensor
    inputs = (3 + 2) * compute * h if casts_per_linear else 2 * compute * h  # attention's and MLP's input
    attention = compute * (2 * h + 2 * kv) + 4 * spec.num_heads  # sdpa's q, k, v, output; fp32 logsumexp
    mlp = 4 * compute * f  # gate, up, silu(gate), their product
    return norms + inputs + attention + mlp


def estimate_memory(
    spec: ModelSpec,
    vocab_size: int,
    seq_len: int,
    micro_batch: int,
    *,
    strategy: str,
    precision: str,
    world_size: int,
    activation_checkpointing: bool,
) -> MemoryEstimate:
    """Bytes per GPU at the peak of a training step of `micro_batch` sequences of `seq_len` tokens.

    - ddp (or one device): fp32 weights, gradients and AdamW moments on every GPU; under DDP on more than one GPU
      also its gradient buckets (`gradient_as_bucket_view` off, Lightning's default: a second fp32 copy of the
      gradients).
    - fsdp (FSDP2, `kinject.training.distributed`): the fp32 weights and moments sharded over `world_size`, gathered
      in bf16 under bf16-mixed (in fp32 otherwise): the root unit (embeddings, norm, head) for the whole step and two
      decoder layers at a time (the one running and the one prefetched). The gradients are reduce-scattered on a
      step's last micro-batch only: until then each rank holds them unsharded in fp32 (an estimate for a step of one
      micro-batch is high by that much, less a shard).
    - mixed precision with fp32 weights (DDP, or FSDP in 16-mixed) adds autocast's 16-bit copy of every matmul
      weight, kept from the forward to the backward.
    - activations: the tensors every decoder layer saves, with activation checkpointing only each layer's input (the
      layer recomputed in the backward counts where it needs more than the loss had freed); the final norm and the
      head's input.
    - logits: the loss over the vocabulary, `LOSS_BYTES_PER_VOCAB` bytes per token and vocabulary entry.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    n = _params(spec, vocab_size)
    mixed = precision != "32-true"
    h, tokens = spec.hidden_size, micro_batch * seq_len
    if strategy == "fsdp":
        gathered = 2 if precision == "bf16-mixed" else 4
        shard = n.total / world_size
        params = 4 * shard + gathered * (n.root + 2 * n.layer)
        grads = 4 * n.total  # unsharded, in fp32, held between the micro-batches of a step (sync_gradients)
        optimizer = 8 * shard
        residual = gathered
    else:
        params = 4 * n.total
        grads = 4 * n.total * (2 if world_size > 1 else 1)
        optimizer = 8 * n.total
        residual = 4
    copies = mixed and residual == 4  # autocast casts fp32 weights, and keeps each 16-bit copy for the backward
    if copies:
        params += 2 * n.cast
    compute = 2 if mixed else 4
    layer = _layer_bytes_per_token(spec, residual, compute, copies)
    head = 4 * h + residual * h + compute * h  # the final norm and the head's input
    loss = LOSS_BYTES_PER_VOCAB * vocab_size
    if activation_checkpointing:
        # The recomputed layer (its activations, and under autocast its weights' copies again) reuses what the
        # loss's backward has freed by then, and the other layers' weight copies, which nothing saved.
        layer_copies = 2 * (n.layer - 2 * h) if copies else 0
        recompute = max(0.0, tokens * (layer - loss) - (spec.num_layers - 1) * layer_copies)
        activations = tokens * (spec.num_layers * residual * h + head) + recompute
    else:
        activations = tokens * (spec.num_layers * layer + head)
    return MemoryEstimate(
        params=params, grads=grads, optimizer=optimizer, activations=activations, logits=tokens * loss
    )


def measure_peak_memory(
    spec: ModelSpec,
    vocab_size: int,
    seq_len: int,
    micro_batch: int,
    *,
    precision: str = "32-true",
    activation_checkpointing: bool = False,
    device: str | torch.device = "cpu",
) -> float:
    """Peak bytes allocated on one device while the model is built and trained, in Lightning's order: each
    micro-batch's forward under the precision's autocast, then zero_grad on a step's first micro-batch, then backward;
    AdamW steps. Two steps of two micro-batches, so that the peak is the steady state `estimate_memory` counts (the
    moments exist, and gradients are held through a micro-batch's forward and backward). On a GPU the allocator's
    peak; on the CPU the profiler's allocation events summed in time order. Compare with `estimate_memory(...,
    strategy="ddp", world_size=1)`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)

    def train() -> None:
        model = build(spec, vocab_size, device)
        if activation_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")  # as CausalLM's
        ids = torch.randint(0, vocab_size, (micro_batch, seq_len), device=device)
        dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
        for _step in range(2):
            for first in (True, False):
                with torch.autocast(device.type, dtype=dtype, enabled=precision != "32-true"):
                    loss = model(input_ids=ids, labels=ids).loss
                if first:
                    optimizer.zero_grad()
                loss.backward()
            optimizer.step()

    return _cuda_peak(train, device) if device.type == "cuda" else _cpu_peak(train)


def _cuda_peak(run: Callable[[], None], device: torch.device) -> float:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - before)


def _cpu_peak(run: Callable[[], None]) -> float:
    """The CPU allocator keeps no peak: the profiler records every allocation and free with its size, and their
    running sum in time order is the bytes allocated at each moment."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        run()
    sizes: list[tuple[int, int]] = []
    stack = list(recorded.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
        stack.extend(event.children)
    live = peak = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    return float(peak)
