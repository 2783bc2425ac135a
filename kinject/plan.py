"""The cost of a sweep before it runs: every job with its tokens, injected share, steps, GPU-hours, memory per GPU
and requeues, and the jobs a run would refuse or that would not finish, with why and what to change.

    kinject-plan experiment=paper [OVERRIDES...] [--gpu "H100 SXM"] [--mfu 0.4] [--gpu-memory-gb 80] [--memory]

Needs no GPU, network or data. The config is composed as train.py composes it and the sweep expanded as
Hydra's basic sweeper expands it (`hydra.sweeper.params` and command-line lists); the budget and what is
refused come from the code a run uses (`kinject.budget`, `kinject.infusion.schedule`); training FLOPs per
token are counted on a meta-device copy of each model. A job is also refused when its memory per GPU
(`kinject.training.memory`, for its strategy and precision) leaves less than `HEADROOM` of the GPU free, and
when its wall time needs more requeues than its SLURM launcher allows (`hydra.launcher.timeout_min` and
`max_num_timeout`). What only a run can measure is assumed and said in the header: the tokens of an injected
statement, and knowledge files holding `knowledge.num_facts` triples.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from kinject import CONF_DIR
from kinject.budget import Budget, check_injection, check_room, world_size
from kinject.errors import ConfigError
from kinject.infusion.formats import InfusionConfig
from kinject.infusion.schedule import BLOCK_PACKINGS, check_block, check_freq, window_sequences
from kinject.init import resolve as resolve_init
from kinject.training.memory import PRECISIONS, MemoryEstimate, estimate_memory
from kinject.training.model import ModelSpec, flops_per_token
from kinject.training.throughput import peak_flops, training_seconds

# Memory per GPU by the lower-cased name given with --gpu, matched in order like the peaks of --gpu; the A100 as
# its 80 GB model (--gpu-memory-gb 40 for the other).
GPU_MEMORY_GB: tuple[tuple[str, float], ...] = (
    ("h200", 141),
    ("h100 nvl", 94),
    ("h100", 80),
    ("b200", 180),
    ("a100", 80),
    ("l40", 48),
    ("l4", 24),
)
# Share of a GPU's memory the estimate leaves free: the CUDA context, NCCL buffers and the allocator's fragmentation
HEADROOM = 0.1


@dataclass(frozen=True)
class Job:
    overrides: tuple[str, ...]
    model: str
    freq: int
    tokens: int
    injected_share: float
    steps: int
    gpu_hours: float
    refused: str | None
    memory: MemoryEstimate | None = None
    requeues: int | None = None  # beyond the first run, under the launcher's time limit; None: no limit


@dataclass(frozen=True)
class Assumptions:
    gpu: str
    peak: float
    mfu: float
    statement_tokens: float
    gpu_memory_gb: float = 80.0

    @property
    def usable_bytes(self) -> float:
        return (1 - HEADROOM) * self.gpu_memory_gb * 1e9


@contextlib.contextmanager
def _config_dir() -> Iterator[None]:
    """Where compose() finds conf/: inside a running train.py (a sweep's Hydra callback) the app's own, which is
    conf/ (initializing Hydra again there would rename the app's jobs), else conf/ itself."""
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        yield


def jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job of `python train.py -m OVERRIDES`, in the basic sweeper's order."""
    parser = OverridesParser.create()
    # parse_overrides sets input_line on every override it returns
    fixed = cast(list[str], [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()])
    with _config_dir():
        base = compose("config", overrides=fixed, return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (base.hydra.sweeper.get("params") or {}).items()]
    return BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)[0]


def compose_job(overrides: list[str]) -> DictConfig:
    """A job's config as train.py composes it, Hydra's own settings included (the launcher's time limit)."""
    with _config_dir():
        return compose("config", overrides=overrides, return_hydra_config=True)


def gpu_memory_gb(gpu: str) -> float | None:
    name = gpu.lower()
    return next((gb for key, gb in GPU_MEMORY_GB if key in name), None)


def strategy_of(trainer: DictConfig) -> str:
    """ "fsdp" for a sharded strategy (kinject's FSDP2Strategy, Lightning's "fsdp"), else "ddp" (one device too)."""
    strategy = trainer.get("strategy", "auto")
    name = strategy.get("_target_", "") if OmegaConf.is_dict(strategy) else str(strategy)
    return "fsdp" if "fsdp" in name.lower() else "ddp"


def memory_of(cfg: DictConfig, spec: ModelSpec, vocab: int, budget: Budget, **changes: Any) -> MemoryEstimate:
    """The job's memory per GPU, or (`changes`: micro_batch, strategy, activation_checkpointing) that of a variant."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError(
            "trainer.precision", f"one of {', '.join(PRECISIONS)} (the ones the memory plan knows)", precision
        )
    return estimate_memory(
        spec,
        vocab,
        budget.seq_len,
        changes.get("micro_batch", budget.micro_batch_size),
        strategy=changes.get("strategy", strategy_of(cfg.trainer)),
        precision=precision,
        world_size=budget.world_size,
        activation_checkpointing=changes.get("activation_checkpointing", bool(cfg.get("activation_checkpointing"))),
    )


def check_memory(cfg: DictConfig, spec: ModelSpec, vocab: int, budget: Budget, usable: float) -> None:
    """A ConfigError when the job's memory per GPU is over `usable` bytes, naming what would fit: the largest smaller
    micro-batch, activation checkpointing, FSDP, each alone, or else all three together."""
    memory = memory_of(cfg, spec, vocab, budget)
    if memory.total <= usable:
        return

    def fits(**variant: Any) -> float | None:
        total = memory_of(cfg, spec, vocab, budget, **variant).total
        return total if total <= usable else None

    micro = budget.micro_batch_size
    smaller = [m for m in range(micro - 1, 0, -1) if budget.batch_size % (m * budget.world_size) == 0]
    ways: list[tuple[str, float]] = []
    for m in smaller:
        if (total := fits(micro_batch=m)) is not None:
            ways.append((f"data.micro_batch_size={m}", total))
            break
    if not cfg.get("activation_checkpointing") and (total := fits(activation_checkpointing=True)) is not None:
        ways.append(("activation_checkpointing=true", total))
    if strategy_of(cfg.trainer) != "fsdp" and (total := fits(strategy="fsdp")) is not None:
        ways.append(("trainer=fsdp", total))
    if not ways:
        for m in [micro, *smaller]:
            if (total := fits(micro_batch=m, strategy="fsdp", activation_checkpointing=True)) is not None:
                ways.append((f"trainer=fsdp activation_checkpointing=true data.micro_batch_size={m}", total))
                break
    hint = " or ".join(f"{change} ({total / 1e9:.1f} GB)" for change, total in ways)
    raise ConfigError(
        "data.micro_batch_size",
        f"a job that fits {usable / 1e9:.1f} GB per GPU ({1 - HEADROOM:.0%} of its memory)",
        micro,
        hint=f"{_breakdown(memory)}; it fits with {hint}"
        if ways
        else f"{_breakdown(memory)}; nothing fits: more GPUs, larger ones, or a smaller model",
    )


def check_time(cfg: DictConfig, wall_hours: float) -> int | None:
    """Requeues a job needs beyond its first run under the SLURM launcher's time limit (None: no limit); a
    ConfigError when `hydra.launcher.max_num_timeout` allows fewer. Each run trains until the launcher's warning
    signal, `signal_delay_s` before the limit; start-up and evaluation are not counted."""
    limit = OmegaConf.select(cfg, "hydra.launcher.timeout_min")
    if limit is None:
        return None
    hours = (float(limit) * 60 - float(OmegaConf.select(cfg, "hydra.launcher.signal_delay_s", default=0))) / 3600
    needed = max(1, math.ceil(wall_hours / hours)) - 1
    allowed = int(OmegaConf.select(cfg, "hydra.launcher.max_num_timeout", default=0))
    if needed > allowed:
        raise ConfigError(
            "hydra.launcher.max_num_timeout",
            f"requeues enough for {wall_hours:,.1f} wall-hours in runs of {float(limit) / 60:g} h: {needed}",
            allowed,
            hint=f"set hydra.launcher.max_num_timeout={needed}, or raise hydra.launcher.timeout_min if the "
            "cluster allows",
        )
    return needed


def _breakdown(memory: MemoryEstimate) -> str:
    return (
        f"estimated {memory.total / 1e9:.1f} GB (weights {memory.params / 1e9:.1f}, gradients "
        f"{memory.grads / 1e9:.1f}, optimizer {memory.optimizer / 1e9:.1f}, activations "
        f"{memory.activations / 1e9:.1f}, logits {memory.logits / 1e9:.1f})"
    )


@functools.cache
def _flops(spec: ModelSpec, vocab: int, seq_len: int) -> float:
    return flops_per_token(spec, vocab, seq_len)


def cost(cfg: DictConfig, overrides: list[str], assumed: Assumptions) -> Job:
    """One job: what it trains and what it costs, or why a run would refuse it. A model config without sizes
    (model=init) reads them from its init (kinject.init: a folder, or the hub); the public ladder's carry them."""
    if cfg.model.get("init") is not None and cfg.model.get("hidden_size") is None:
        resolve_init(cfg)
    spec = ModelSpec.from_config(cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True)))  # a mapping
    if spec.vocab_size is None:
        raise ConfigError(
            "model.vocab_size",
            "a number for the plan (a model sized by its tokenizer needs the tokenizer, which the plan does not build)",
            None,
        )
    freq, facts = int(cfg.infusion.freq), int(cfg.knowledge.num_facts)
    exposures = facts * freq
    injected = round(exposures * assumed.statement_tokens)
    refused = None
    try:
        budget = Budget.from_config(cfg)
    except ConfigError as error:
        return Job(tuple(overrides), spec.name, freq, 0, math.nan, 0, 0.0, str(error))
    if cfg.infusion.budget == "fixed_background":
        budget = budget.grown(injected)
    try:
        infusion = InfusionConfig.from_config(cfg.infusion)
        check_freq(freq, budget.sequences, infusion.window)
        check_injection(budget, injected, exposures, freq, float(cfg.infusion.max_share))
        lo, hi = window_sequences(infusion.window, budget.sequences)
        if freq and infusion.packing in BLOCK_PACKINGS:
            check_block(
                math.ceil(facts * assumed.statement_tokens / budget.seq_len), (hi - lo) // freq, facts, infusion.packing
            )
        elif freq:
            per_sequence = math.ceil(facts / ((hi - lo) // freq))  # each of the F slices spreads K evenly
            check_room(math.ceil(per_sequence * assumed.statement_tokens), budget.seq_len)
    except ConfigError as error:
        refused = str(error)
    flops = _flops(spec, spec.vocab_size, budget.seq_len)
    if cfg.get("activation_checkpointing"):  # each layer's forward again in the backward: a third of its FLOPs
        flops += (flops - 6 * spec.hidden_size * spec.vocab_size) / 3
    hours = training_seconds(flops, budget.tokens_trained, assumed.mfu * assumed.peak) / 3600
    memory = memory_of(cfg, spec, spec.vocab_size, budget)
    requeues = None
    try:
        check_memory(cfg, spec, spec.vocab_size, budget, assumed.usable_bytes)
        requeues = check_time(cfg, hours / budget.world_size)
    except ConfigError as error:
        refused = refused or str(error)
    return Job(
        tuple(overrides),
        spec.name,
        freq,
        budget.tokens_trained,
        injected / budget.tokens_trained,
        budget.steps,
        hours,
        refused,
        memory,
        requeues,
    )


def report(planned: list[Job], cfg: DictConfig, assumed: Assumptions, command: str, breakdown: bool = False) -> str:
    """The job table with its header of assumptions and the total of the jobs that would run; `breakdown`: the
    memory per GPU in its parts too."""
    devices = world_size(cfg.trainer)
    run = [job for job in planned if job.refused is None]
    shown = ("model", "infusion.freq")
    varying = sorted({o.split("=", 1)[0] for job in planned for o in job.overrides} - set(shown))
    varying = [key for key in varying if len({_value(job, key) for job in planned}) > 1]
    total = sum(job.gpu_hours for job in run)
    limit = OmegaConf.select(cfg, "hydra.launcher.timeout_min")
    time_limit = (
        f"runs of hydra.launcher.timeout_min={limit} min beyond the first, "
        f"max_num_timeout={OmegaConf.select(cfg, 'hydra.launcher.max_num_timeout', default=0)} allowed"
        if limit is not None
        else "none (a launcher without a time limit)"
    )
    parts = ("weights", "grads", "optim", "activ", "logits") if breakdown else ()
    size = max(7, *(len(job.model) + 2 for job in planned))
    lines = [
        f"plan of python train.py -m {command}: {len(planned)} jobs",
        f"GPU: {assumed.gpu}, {assumed.peak / 1e12:,.0f} TFLOP/s dense bf16, at {assumed.mfu:.0%} MFU; "
        f"{devices} GPU(s) per job (trainer.devices x trainer.num_nodes); training only, evaluation not counted",
        f"memory: GB per GPU at a step's peak for the job's strategy and precision (kinject.training.memory), "
        f"refused over {1 - HEADROOM:.0%} of {assumed.gpu_memory_gb:g} GB; requeues: {time_limit}",
        f"assumed: {assumed.statement_tokens:g} tokens per injected statement (EOS included; a run measures it: "
        f"results.json infusion.mean_fact_tokens), knowledge.num_facts={cfg.knowledge.num_facts} triples in the "
        f"knowledge files; infusion.budget={cfg.infusion.budget}",
        "",
        f"{'size':<{size}}{'F':>6}{'tokens':>10}{'injected':>10}{'steps':>9}{'GPU-h':>10}{'wall-h':>9}"
        + "".join(f"{part:>8}" for part in parts)
        + f"{'mem-GB':>8}{'requeues':>10}  "
        + ("other  " if varying else "")
        + "refused",
    ]
    for job in planned:
        share = "" if math.isnan(job.injected_share) else f"{100 * job.injected_share:.3g}%"
        hours = "" if job.refused else f"{job.gpu_hours:,.1f}"
        wall = "" if job.refused else f"{job.gpu_hours / devices:,.1f}"
        memory = job.memory
        parts_gb = (
            [memory.params, memory.grads, memory.optimizer, memory.activations, memory.logits]
            if memory and breakdown
            else []
        )
        gb = "".join(f"{value / 1e9:>8.1f}" for value in parts_gb) + (f"{memory.total / 1e9:>8.1f}" if memory else "")
        requeues = "" if job.refused or job.requeues is None else str(job.requeues)
        other = "".join(f"{key}={_value(job, key)}  " for key in varying)
        line = (
            f"{job.model:<{size}}{job.freq:>6}{job.tokens / 1e9:>9.2f}B{share:>10}{job.steps:>9,}{hours:>10}{wall:>9}"
            f"{gb}{requeues:>10}  {other}{job.refused or ''}"
        )
        lines.append(line.rstrip())
    lines += [
        "",
        f"total: {len(run)} jobs to run, {len(planned) - len(run)} refused: {total:,.0f} GPU-hours "
        f"({total / 24:,.0f} GPU-days) on {assumed.gpu} at {assumed.mfu:.0%} MFU",
    ]
    return "\n".join(lines)


def _value(job: Job, key: str) -> str | None:
    return next((o.split("=", 1)[1] for o in job.overrides if o.split("=", 1)[0] == key), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kinject-plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="as for python train.py -m, e.g. experiment=paper")
    parser.add_argument("--gpu", default="H100 SXM", help="a GPU of kinject.training.throughput's dense bf16 table")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume")
    parser.add_argument(
        "--statement-tokens", type=float, default=13.0, help="tokens per injected statement (EOS included) to assume"
    )
    parser.add_argument(
        "--gpu-memory-gb", type=float, default=None, help="memory of one GPU (default: the --gpu's, e.g. 80 for H100)"
    )
    parser.add_argument("--memory", action="store_true", help="show each job's memory per GPU in its parts")
    args = parser.parse_args(argv)
    peak = peak_flops(args.gpu)
    if peak is None:
        print(f"--gpu: expected a GPU of kinject.training.throughput's table, got {args.gpu!r}", file=sys.stderr)
        return 2
    memory_gb = args.gpu_memory_gb or gpu_memory_gb(args.gpu)
    if memory_gb is None:
        print(f"--gpu-memory-gb: expected the memory of one {args.gpu!r} GPU in GB", file=sys.stderr)
        return 2
    assumed = Assumptions(args.gpu, peak, args.mfu, args.statement_tokens, memory_gb)
    try:
        grid = jobs(args.overrides)
        configs = [compose_job(overrides) for overrides in grid]
        planned = [cost(cfg, overrides, assumed) for cfg, overrides in zip(configs, grid)]
    except (ConfigError, HydraException) as error:
        print(f"bad plan: {error}", file=sys.stderr)
        return 2
    print(report(planned, configs[0], assumed, " ".join(args.overrides), breakdown=args.memory))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
