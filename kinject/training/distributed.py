"""How runs are distributed: FSDP2 sharding, a step rule that keeps collectives in step, and the
combinations known to break, refused up front (which devices a run gets: `kinject.training.devices`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from kinject.errors import ConfigError
from kinject.training.checkpoint import clear_staging, staging, swap_in

_LOCAL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher")


def launcher_rank() -> int:
    """The rank a scheduler gave this process before any process group exists: each SLURM task of a
    multi-GPU job runs the whole Hydra job (Lightning's own DDP children are told apart by Lightning)."""
    return int(os.environ.get("SLURM_PROCID", 0))


# Used by conf/hydra/default.yaml so that only rank 0 writes `.hydra/` and each rank logs to its own file.
OmegaConf.register_new_resolver(
    "kinject.rank_zero_only", lambda value: value if launcher_rank() == 0 else None, replace=True
)
OmegaConf.register_new_resolver(
    "kinject.rank_suffix", lambda: f"_rank{launcher_rank()}" if launcher_rank() else "", replace=True
)


def local_multirun() -> bool:
    """A job of a multirun on this machine (basic or joblib launcher), not one submitted to SLURM."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return False
    return local_launcher(HydraConfig.get().launcher)


def local_launcher(launcher: DictConfig) -> bool:
    """A Hydra launcher (`hydra.launcher`) that runs a sweep's jobs on this machine: basic or joblib."""
    return str(launcher.get("_target_", "")).endswith(_LOCAL_LAUNCHERS)


def guard_local_ddp(cfg: DictConfig) -> None:
    """Lightning's subprocess DDP re-runs the whole command in each child: inside a local multirun every
    rank would re-run the sweep (and a sweeper would record each trial twice). One process per job
    locally; multi-device jobs of a sweep go through the SLURM launcher, where each task is one rank."""
    devices = cfg.trainer.get("devices", 1)
    multi = devices not in (1, "1") or int(cfg.trainer.get("num_nodes", 1)) > 1
    if multi and local_multirun():
        raise ConfigError(
            "trainer.devices",
            "1 device per job in a local multirun",
            devices,
            hint="run multi-device jobs one at a time, or sweep with hydra/launcher=slurm",
        )


class OncePerStep:
    """Lightning advances `global_step` before `on_train_batch_end`, so with gradient accumulation a hook
    keyed on the step sees each step on `accumulation` consecutive micro-batches (after a resume, the
    restored step too). This fires once per optimizer step taken in this `fit`, the same on every rank:
    the condition for reaching a collective without a hang. Call `start` from `on_train_start`."""

    def __init__(self) -> None:
        self.seen_step = 0

    def start(self, step: int) -> None:
        self.seen_step = step

    def new_step(self, step: int) -> bool:
        fresh = step > self.seen_step
        self.seen_step = max(step, self.seen_step)
        return fresh


def decides(trainer: Trainer, step: int, every: int) -> bool:
    """Whether the ranks decide something together at this optimizer step (whether to stop on a signal, whether a
    checkpoint is due by time): each decision is a collective and, on GPUs, a host sync, so across ranks it is taken
    once every `every` steps; in one process, where it costs nothing, at every step. Call it on every rank at the
    same steps (after `OncePerStep.new_step`)."""
    return every == 1 or trainer.world_size == 1 or step % every == 0


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel (FSDP2) over every process, without tensor parallelism. The module
    shards itself in `configure_model`; parameters keep their names and shapes (DTensors), checkpoints
    are saved sharded, one file per rank. Unlike Lightning's FSDP1 strategy it also runs on CPU (gloo)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """torch.distributed.checkpoint writes the shards in place: into `filepath` itself, a kill mid-save would
        leave shards of two steps. Every rank writes into a new folder instead, and rank 0 swaps it in once all
        have (`kinject.training.checkpoint.swap_in`); when this returns, on any rank, the checkpoint is in place."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(filepath))
        new = staging(path, int(checkpoint.get("global_step", 0)))
        if self.global_rank == 0:
            clear_staging(path)
        self.barrier("kinject_clear_staging")
        super().save_checkpoint(checkpoint, new, storage_options)
        self.barrier("kinject_shards_written")
        if self.global_rank == 0:
            swap_in(new, path)
        self.barrier("kinject_swapped_in")


def fully_shard_llama(model: torch.nn.Module, mesh: DeviceMesh, bf16: bool) -> None:
    """One FSDP unit per decoder layer, the embeddings, final norm and head in the root unit. With bf16
    the weights are gathered and used in bf16, gradients reduced in fp32."""
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    for layer in model.model.layers:  # type: ignore[union-attr]  # nn.Module.__getattr__ is typed Tensor | Module
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def sync_gradients(model: torch.nn.Module, now: bool) -> None:
    """Whether the next backward of an FSDP2 model reduce-scatters its gradients. With gradient accumulation only
    the last micro-batch's needs to: before it, each rank adds into unsharded gradients of its own (in the reduce
    dtype, fp32: 4 bytes per parameter held between micro-batches). Lightning's `block_backward_sync` handles
    DDP alone, and its Trainer never tells FSDP2."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(now)


def load_from_rank_zero(model: torch.nn.Module, full_state: dict[str, torch.Tensor], device: torch.device) -> None:
    """After sharding: ranks that built the model on the meta device get memory for their shards, then every
    rank's shards and buffers are filled from rank 0's full copy (`full_state`, empty elsewhere). Host memory
    for the whole model is needed on rank 0 alone; the weights are those of a one-process run of the seed."""
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        model.to_empty(device=device)
    set_model_state_dict(
        model,
        full_state,  # type: ignore[arg-type]  # dict is invariant: Tensor values are a valid state dict
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)
