"""The cost of a sweep before it runs: every job with its tokens, injected share, steps and GPU-hours, and the
jobs a run would refuse, with why.

    kinject-plan experiment=paper [OVERRIDES...] [--gpu "H100 SXM"] [--mfu 0.4] [--statement-tokens 13]

Needs no GPU, network or data. The config is composed as train.py composes it and the sweep expanded as
Hydra's basic sweeper expands it (`hydra.sweeper.params` and command-line lists); the budget and what is
refused come from the code a run uses (`kinject.budget`, `kinject.infusion.schedule`); training FLOPs per
token are counted on a meta-device copy of each model. What only a run can measure is assumed and said in
the header: the tokens of an injected statement, and knowledge files holding `knowledge.num_facts` triples.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass
from typing import Any, cast

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from kinject import CONF_DIR
from kinject.budget import Budget, check_injection, check_room, world_size
from kinject.errors import ConfigError
from kinject.infusion.formats import InfusionConfig
from kinject.infusion.schedule import BLOCK_PACKINGS, check_block, check_freq, window_sequences
from kinject.training.model import ModelSpec, flops_per_token
from kinject.training.throughput import peak_flops, training_seconds


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


@dataclass(frozen=True)
class Assumptions:
    gpu: str
    peak: float
    mfu: float
    statement_tokens: float


def jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job of `python train.py -m OVERRIDES`, in the basic sweeper's order."""
    parser = OverridesParser.create()
    # parse_overrides sets input_line on every override it returns
    fixed = cast(list[str], [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()])
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        base = compose("config", overrides=fixed, return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (base.hydra.sweeper.get("params") or {}).items()]
    return BasicSweeper.split_arguments(parser.parse_overrides(params + overrides), None)[0]


def compose_job(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


@functools.cache
def _flops(spec: ModelSpec, vocab: int, seq_len: int) -> float:
    return flops_per_token(spec, vocab, seq_len)


def cost(cfg: DictConfig, overrides: list[str], assumed: Assumptions) -> Job:
    """One job: what it trains and what it costs, or why a run would refuse it."""
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
    seconds = training_seconds(
        _flops(spec, spec.vocab_size, budget.seq_len), budget.tokens_trained, assumed.mfu * assumed.peak
    )
    return Job(
        tuple(overrides),
        spec.name,
        freq,
        budget.tokens_trained,
        injected / budget.tokens_trained,
        budget.steps,
        seconds / 3600,
        refused,
    )


def report(planned: list[Job], cfg: DictConfig, assumed: Assumptions, command: str) -> str:
    """The job table with its header of assumptions and the total of the jobs that would run."""
    devices = world_size(cfg.trainer)
    run = [job for job in planned if job.refused is None]
    shown = ("model", "infusion.freq")
    varying = sorted({o.split("=", 1)[0] for job in planned for o in job.overrides} - set(shown))
    varying = [key for key in varying if len({_value(job, key) for job in planned}) > 1]
    total = sum(job.gpu_hours for job in run)
    lines = [
        f"plan of python train.py -m {command}: {len(planned)} jobs",
        f"GPU: {assumed.gpu}, {assumed.peak / 1e12:,.0f} TFLOP/s dense bf16, at {assumed.mfu:.0%} MFU; "
        f"{devices} GPU(s) per job (trainer.devices x trainer.num_nodes); training only, evaluation not counted",
        f"assumed: {assumed.statement_tokens:g} tokens per injected statement (EOS included; a run measures it: "
        f"results.json infusion.mean_fact_tokens), knowledge.num_facts={cfg.knowledge.num_facts} triples in the "
        f"knowledge files; infusion.budget={cfg.infusion.budget}",
        "",
        f"{'size':<7}{'F':>6}{'tokens':>10}{'injected':>10}{'steps':>9}{'GPU-h':>10}{'wall-h':>9}  "
        + ("other  " if varying else "")
        + "refused",
    ]
    for job in planned:
        share = "" if math.isnan(job.injected_share) else f"{100 * job.injected_share:.3g}%"
        hours = "" if job.refused else f"{job.gpu_hours:,.1f}"
        wall = "" if job.refused else f"{job.gpu_hours / devices:,.1f}"
        other = "".join(f"{key}={_value(job, key)}  " for key in varying)
        line = (
            f"{job.model:<7}{job.freq:>6}{job.tokens / 1e9:>9.2f}B{share:>10}{job.steps:>9,}{hours:>10}{wall:>9}  "
            f"{other}{job.refused or ''}"
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
    args = parser.parse_args(argv)
    peak = peak_flops(args.gpu)
    if peak is None:
        print(f"--gpu: expected a GPU of kinject.training.throughput's table, got {args.gpu!r}", file=sys.stderr)
        return 2
    assumed = Assumptions(args.gpu, peak, args.mfu, args.statement_tokens)
    try:
        grid = jobs(args.overrides)
        configs = [compose_job(overrides) for overrides in grid]
        planned = [cost(cfg, overrides, assumed) for cfg, overrides in zip(configs, grid)]
    except (ConfigError, HydraException) as error:
        print(f"bad plan: {error}", file=sys.stderr)
        return 2
    print(report(planned, configs[0], assumed, " ".join(args.overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
