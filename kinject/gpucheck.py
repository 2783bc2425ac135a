"""One command that proves the GPU path: `kinject-gpucheck` (a few minutes on one GPU).

    kinject-gpucheck [--out gpucheck.json] [--workdir DIR] [--checks throughput,compiled,accumulation,fsdp_resume]
    kinject-gpucheck --cpu        # the same checks with a tiny model on the CPU (how the logic is tested)

Checks, each a row of the printed table and an entry of the JSON file:
- `throughput`, `compiled`: `137m` in bf16 through train.py's own module and trainer, eager and with
  `compile=true`: tokens/s, MFU against the GPU's dense bf16 peak, and the peak memory against the plan's estimate
  (`kinject.training.memory.estimate_memory`; it must be within `--memory-tolerance`).
- `accumulation`: a train.py run with gradient accumulation 4 and periodic evaluation; its record is complete with
  the curve at every evaluation step, and evaluate.py on the same device reproduces its metrics.
- `fsdp_resume`: a one-GPU FSDP2 run stopped by SIGTERM mid-run resumes, from the step it saved, to the result of
  an uninterrupted run; evaluate.py reads the sharded checkpoint and reproduces the metrics.
Goals (reported, not failed on): MFU of 40% or more, evaluation under 3% of training time at the default cadence.
Exits 1 when a check fails, 2 when it cannot run here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L

from kinject import CONF_DIR
from kinject.files import write_json_atomic

CHECKS = ("throughput", "compiled", "accumulation", "fsdp_resume")
MFU_GOAL = 0.40
EVAL_SHARE_GOAL = 0.03


@dataclass(frozen=True)
class Setup:
    """What the checks run on: the GPU path, or (`--cpu`) the same checks with a tiny model."""

    device: str
    model: str
    trainer: str
    fsdp_trainer: str
    seq_len: int
    batch_size: int
    micro_batch_size: int
    steps: int
    warmup_steps: int
    run_seq_len: int
    run_steps: int
    resume_tolerance: float
    facts: int  # facts injected and background facts asked by the train.py runs (their evaluation's size)


GPU = Setup("cuda", "137m", "gpu", "fsdp", 2048, 32, 16, 40, 10, 512, 40, 2e-3, 60)
CPU = Setup("cpu", "tiny", "cpu", "fsdp_cpu", 128, 16, 8, 12, 4, 64, 24, 1e-5, 16)


@dataclass
class Check:
    name: str
    ok: bool
    figures: dict[str, Any] = field(default_factory=dict)
    detail: str = ""


class StepMarks(L.Callback):
    """Writes `path` (JSON) with the step training started from and, once `stop_at` is reached, the step then:
    the SIGTERM of `fsdp_resume` waits for it, and the resumed run's first step shows it resumed."""

    def __init__(self, path: str, stop_at: int = 0, pause_s: float = 0.0) -> None:
        self.path = Path(path)
        self.stop_at = stop_at
        self.pause_s = pause_s
        self.marks: dict[str, int] = {}

    def _write(self) -> None:
        self.path.write_text(json.dumps(self.marks))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.marks = {"first_step": trainer.global_step}
            self._write()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if (
            trainer.is_global_zero
            and self.stop_at
            and trainer.global_step >= self.stop_at
            and "reached" not in self.marks
        ):
            self.marks["reached"] = trainer.global_step
            self._write()
            time.sleep(self.pause_s)  # time for the signal to arrive before the run could end on its own


def memory_within(measured: float, estimated: float, tolerance: float) -> bool:
    """The plan's estimate is within `tolerance` of the measured peak (relative to the measurement)."""
    return measured > 0 and abs(estimated - measured) <= tolerance * measured


def eval_share(eval_s_per_evaluation: float, step_s: float, every_n_steps: int) -> float:
    """Evaluation time as a share of training time when a run evaluates every `every_n_steps` steps."""
    return eval_s_per_evaluation / (eval_s_per_evaluation + every_n_steps * step_s)


def max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    """The largest absolute difference between two runs' metrics (a metric missing from one counts as infinite)."""
    keys = set(a) | set(b)
    return max((abs(a[k] - b[k]) if k in a and k in b else math.inf for k in keys), default=0.0)


def throughput(setup: Setup, workdir: Path, compiled: bool, memory_tolerance: float) -> Check:
    """Tokens/s, MFU and peak memory of `setup.model` through train.py's module and trainer, in this process."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from kinject.cli.train import build_module, build_trainer
    from kinject.run.experiment import prepare
    from kinject.training.model import ModelSpec
    from kinject.training.throughput import OptimizerStepTimer, mfu, peak_flops

    name = "compiled" if compiled else "throughput"
    overrides = [
        f"model={setup.model}",
        f"trainer={setup.trainer}",
        f"data.seq_len={setup.seq_len}",
        f"data.batch_size={setup.batch_size}",
        f"data.micro_batch_size={setup.micro_batch_size}",
        f"tokens={(setup.steps + setup.warmup_steps) * setup.batch_size * setup.seq_len}",
        "eval.every_n_steps=0",
        "eval.background_facts=0",
        "eval.heldout_sequences=0",
        "logger=none",
        "trainer.checkpoint.every_n_steps=1000000",
        "trainer.enable_progress_bar=false",
        "knowledge.num_facts=100",
        "infusion.freq=4",
        f"compile={str(compiled).lower()}",
        f"paths.output_dir={workdir / name}",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    experiment = prepare(cfg)
    module = build_module(cfg, experiment)
    timer = OptimizerStepTimer()
    trainer = build_trainer(cfg, experiment, [], [timer])
    cuda = setup.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=experiment.datamodule)
    budget = experiment.budget
    tokens_per_s = timer.tokens_per_s(budget.tokens_per_step, setup.warmup_steps)
    loss = float(trainer.callback_metrics.get("train/loss", math.nan))
    figures: dict[str, Any] = {"tokens_per_s": round(tokens_per_s), "loss": round(loss, 4)}
    ok = math.isfinite(loss)
    if cuda:
        flops_per_token = module.flops_per_batch / (budget.micro_batch_size * budget.seq_len)
        peak = peak_flops(torch.cuda.get_device_name())
        if peak is not None:
            figures["mfu"] = round(mfu(tokens_per_s, flops_per_token, peak), 4)
            figures["mfu_goal_met"] = figures["mfu"] >= MFU_GOAL
        from kinject.training.memory import estimate_memory

        measured = torch.cuda.max_memory_allocated()
        spec = ModelSpec.from_config(OmegaConf.to_container(cfg.model, resolve=True))  # type: ignore[arg-type]
        estimate = estimate_memory(
            spec,
            experiment.vocab_size,
            budget.seq_len,
            budget.micro_batch_size,
            strategy="ddp",
            precision=str(cfg.trainer.precision),
            world_size=1,
            activation_checkpointing=bool(cfg.get("activation_checkpointing", False)),
        )
        figures |= {"peak_memory_gb": round(measured / 1e9, 2), "estimated_gb": round(estimate.total / 1e9, 2)}
        figures["memory_error"] = round(estimate.total / measured - 1, 3)
        ok = ok and memory_within(measured, estimate.total, memory_tolerance)
    detail = f"{setup.model}, {budget.micro_batch_size}x{budget.seq_len} tokens a micro-batch, {cfg.trainer.precision}"
    del trainer, module
    return Check(name, ok, figures, detail)


def _train(workdir: Path, run: str, overrides: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kinject.cli.train", *overrides, *_folder(workdir / run)]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout)


def _folder(output_dir: Path) -> list[str]:
    """The run folder, which also holds Hydra's log (`train.log`, read for the evaluation times)."""
    return [f"hydra.run.dir={output_dir}", f"paths.output_dir={output_dir}"]


def _run_overrides(setup: Setup, workdir: Path, *more: str) -> list[str]:
    return [
        f"model={setup.model}",
        f"trainer={setup.trainer}",
        f"data.seq_len={setup.run_seq_len}",
        "data.batch_size=32",
        "data.micro_batch_size=8",
        f"tokens={setup.run_steps * 32 * setup.run_seq_len}",
        f"knowledge.num_facts={setup.facts}",
        "infusion.freq=4",
        f"eval.background_facts={setup.facts}",
        "eval.heldout_sequences=16",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"paths.cache_dir={workdir / 'cache'}",
        *more,
    ]


def _record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "results.json").read_text())


def _failed(name: str, done: subprocess.CompletedProcess) -> Check:
    return Check(name, False, {"returncode": done.returncode}, done.stderr[-1500:])


def _reproduced(setup: Setup, checkpoint: Path, metrics: dict[str, float]) -> float:
    """The largest difference between a run's metrics and evaluate.py's on the same device."""
    from kinject.cli.evaluate import evaluate

    again = evaluate(checkpoint, device=setup.device)
    return max_difference({k: v for k, v in metrics.items() if k in again.metrics}, again.metrics)


def accumulation(setup: Setup, workdir: Path) -> Check:
    """Accumulation 4 and an evaluation every 10 steps on the device; evaluate.py reproduces the metrics."""
    every = 10
    done = _train(workdir, "accumulation", _run_overrides(setup, workdir, f"eval.every_n_steps={every}"))
    if done.returncode != 0:
        return _failed("accumulation", done)
    record = _record(workdir / "accumulation")
    steps = record["budget"]["steps"]
    log = (workdir / "accumulation" / "train.log").read_text()
    evals = [float(s) for s in re.findall(r"evaluation at step \d+ took ([\d.]+) s", log)]
    eval_s = sum(evals) / max(1, len(evals))
    step_s = max(1e-9, (record["run"]["wall_s"] - sum(evals)) / steps)
    difference = _reproduced(setup, workdir / "accumulation" / "checkpoints" / "last.ckpt", record["metrics"])
    default_every = 100
    figures = {
        "accumulation": record["budget"]["batch_size"] // int(record["config"]["data"]["micro_batch_size"]),
        "curve_steps": [point["step"] for point in record["curve"]],
        "eval_s": round(eval_s, 3),
        "step_s": round(step_s, 4),
        "eval_share_at_every_100": round(eval_share(eval_s, step_s, default_every), 4),
        "evaluate_max_difference": difference,
    }
    figures["eval_goal_met"] = figures["eval_share_at_every_100"] <= EVAL_SHARE_GOAL
    expected_curve = [0, *range(every, steps + 1, every)]  # step 0: before the first step
    ok = record["status"] == "complete" and figures["curve_steps"] == expected_curve and difference <= 1e-3
    detail = f"{steps} steps, micro-batch 8 of 32, evaluation every {every} steps"
    return Check("accumulation", ok, figures, detail)


def fsdp_resume(setup: Setup, workdir: Path) -> Check:
    """Uninterrupted, then stopped by SIGTERM and resumed: the same metrics, and the resumed run starts at the saved
    step; evaluate.py reads the sharded checkpoint."""
    marks = workdir / "marks.json"
    common = _run_overrides(
        setup,
        workdir,
        f"trainer={setup.fsdp_trainer}",
        "trainer.devices=1",
        "eval.every_n_steps=8",
        "trainer.checkpoint.every_n_steps=1000",
        "trainer.checkpoint.every_minutes=null",
        "+callbacks.marks._target_=kinject.gpucheck.StepMarks",
        f"+callbacks.marks.path={marks}",
    )
    straight = _train(workdir, "fsdp_straight", common)
    if straight.returncode != 0:
        return _failed("fsdp_resume", straight)
    stop_at = setup.run_steps // 2
    command = [
        sys.executable,
        "-m",
        "kinject.cli.train",
        *common,
        f"+callbacks.marks.stop_at={stop_at}",
        "+callbacks.marks.pause_s=2",
        *_folder(workdir / "fsdp_stopped"),
    ]
    marks.unlink(missing_ok=True)
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if marks.exists() and "reached" in json.loads(marks.read_text() or "{}"):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    stopped = _record(workdir / "fsdp_stopped")
    if process.returncode != 128 + signal.SIGTERM or stopped["status"] != "interrupted":
        return Check(
            "fsdp_resume", False, {"returncode": process.returncode, "status": stopped["status"]}, stderr[-1500:]
        )
    resumed = _train(workdir, "fsdp_stopped", [*common, f"+callbacks.marks.stop_at={stop_at}"])
    if resumed.returncode != 0:
        return _failed("fsdp_resume", resumed)
    first_step = json.loads(marks.read_text())["first_step"]
    a, b = _record(workdir / "fsdp_straight"), _record(workdir / "fsdp_stopped")
    difference = max_difference(a["metrics"], b["metrics"])
    evaluated = _reproduced(setup, workdir / "fsdp_stopped" / "checkpoints" / "last.ckpt", b["metrics"])
    figures = {
        "stopped_at": stopped["step"],
        "resumed_from": first_step,
        "max_difference": difference,
        "evaluate_max_difference": evaluated,
    }
    ok = (
        b["status"] == "complete"
        and 0 < stopped["step"] == first_step < b["budget"]["steps"]
        and difference <= setup.resume_tolerance
        and evaluated <= 1e-3
    )
    return Check("fsdp_resume", ok, figures, f"{setup.fsdp_trainer} on 1 device, SIGTERM at step {stopped['step']}")


def run_checks(setup: Setup, workdir: Path, names: list[str], memory_tolerance: float = 0.25) -> list[Check]:
    """Each named check, in order; one that raises is a failed row with the error, and the others still run."""
    checks = []
    for name in names:
        started = time.perf_counter()
        try:
            if name in ("throughput", "compiled"):
                check = throughput(setup, workdir, name == "compiled", memory_tolerance)
            elif name == "accumulation":
                check = accumulation(setup, workdir)
            else:
                check = fsdp_resume(setup, workdir)
        except Exception as error:  # a check that cannot run is a failure to report, not a reason to stop
            check = Check(name, False, {}, f"{type(error).__name__}: {error}")
        check.figures["seconds"] = round(time.perf_counter() - started, 1)
        checks.append(check)
        print(_row(check), flush=True)
    return checks


def _row(check: Check) -> str:
    figures = ", ".join(f"{key}={value}" for key, value in check.figures.items())
    status = "PASS" if check.ok else "FAIL"
    return f"{check.name:13s} {status}  {figures}" + (f"\n{'':19s}{check.detail}" if check.detail else "")


def _machine(setup: Setup) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": setup.device, "torch": torch.__version__}
    if setup.device == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(), "gpus": torch.cuda.device_count()}
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kinject-gpucheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the same checks with a tiny model on the CPU")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated, among {', '.join(CHECKS)}")
    parser.add_argument("--out", type=Path, default=Path("gpucheck.json"), help="the JSON report")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a new temporary folder)")
    parser.add_argument("--memory-tolerance", type=float, default=0.25, help="plan vs measured peak memory")
    parser.add_argument("--resume-tolerance", type=float, help="largest metric difference after a resume")
    args = parser.parse_args(argv)
    names = [name for name in args.checks.split(",") if name]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        parser.error(f"--checks: expected names among {', '.join(CHECKS)}, got {', '.join(unknown)}")
    import torch

    setup = CPU if args.cpu else GPU
    if args.resume_tolerance is not None:
        setup = replace(setup, resume_tolerance=args.resume_tolerance)
    if setup.device == "cuda" and not torch.cuda.is_available():
        print("kinject-gpucheck: no CUDA GPU here; `kinject-gpucheck --cpu` runs the same checks on the CPU")
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kinject-gpucheck-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KINJECT_CACHE", str(workdir / "cache"))
    print(f"kinject-gpucheck on {setup.device} ({setup.model}); runs in {workdir}", flush=True)
    checks = run_checks(setup, workdir, names, args.memory_tolerance)
    failed = [check.name for check in checks if not check.ok]
    report = {
        "schema": "kinject.gpucheck/1",
        "machine": _machine(setup),
        "setup": asdict(setup),
        "checks": [asdict(check) for check in checks],
        "passed": not failed,
    }
    write_json_atomic(args.out, report)
    print(f"{'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)}; report: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
