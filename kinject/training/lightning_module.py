"""The LightningModule: a Llama causal LM trained with AdamW, linear warmup and cosine decay."""

from __future__ import annotations

import math
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from kinject.training.distributed import OncePerStep, fully_shard_llama, load_from_rank_zero, sync_gradients
from kinject.training.model import ModelSpec, build

NO_DECAY = ("norm", "bias")


@torch.no_grad()
def split_loss(logits: torch.Tensor, ids: torch.Tensor, injected: torch.Tensor) -> dict[str, torch.Tensor]:
    """The training loss on injected and on background tokens apart: `train/loss` mixes them in a share that
    grows with F, so it is not comparable across F. Each sequence starts with its `injected` tokens. One
    sequence at a time: a float copy of a whole micro-batch's logits is gigabytes at vocab 32k."""
    losses = torch.stack(
        [F.cross_entropy(row[:-1].float(), target[1:], reduction="none") for row, target in zip(logits, ids)]
    )
    position = torch.arange(1, ids.size(1), device=ids.device)[None, :]
    is_injected = position < injected.to(ids.device)[:, None]
    split = {}
    for name, mask in (("train/loss_injected", is_injected), ("train/loss_background", ~is_injected)):
        if mask.any():
            split[name] = losses[mask].mean()
    return split


class CausalLM(L.LightningModule):
    # declared only (no value: ThroughputMonitor tests hasattr); train.build_module sets it for MFU
    flops_per_batch: float

    def __init__(
        self,
        model: dict[str, Any],
        vocab_size: int,
        lr: float = 3e-3,
        min_lr_ratio: float = 0.1,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 50,
        total_steps: int = 1000,
        on_meta: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["on_meta"])
        self.model = build(ModelSpec.from_config(model), vocab_size, device="meta" if on_meta else "cpu")
        self.last_loss = torch.zeros(())
        self.checked = OncePerStep()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ids = batch["input_ids"]
        sync_gradients(self.model, not self.trainer.fit_loop._should_accumulate())
        out = self.model(input_ids=ids, labels=ids)
        self.log("train/loss", out.loss, prog_bar=True)
        step = self.global_step
        every = self.trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by Lightning's logger connector
        if step % every == 0 or step == self.trainer.max_steps - 1:
            self.log_dict(split_loss(out.logits, ids, batch["injected"]))
        self.last_loss = out.loss.detach()
        return out.loss

    def on_train_start(self) -> None:
        self.checked.start(self.global_step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """A divergence check every `log_every_n_steps` optimizer steps, not every micro-batch: reading the
        loss is a host sync. All ranks agree on the verdict, so none is left waiting in a collective."""
        step = self.global_step
        every = self.trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by Lightning's logger connector
        if step % every or not self.checked.new_step(step):
            return
        loss = float(self.last_loss)
        if not self.trainer.strategy.reduce_boolean_decision(math.isfinite(loss), all=True):
            self._diverged(f"the training loss is {loss} (on some rank)")

    def configure_model(self) -> None:
        """Under FSDP2 (trainer=fsdp) the model shards itself, so that the evaluation can call it directly.
        Only rank 0 holds the whole model (the others built it on the meta device): it sends each rank its shards."""
        if self.device_mesh is None or isinstance(self.model, FSDPModule):
            return
        full = self.model.state_dict() if self.global_rank == 0 else {}
        fully_shard_llama(self.model, self.device_mesh["data_parallel"], bf16=self.trainer.precision.startswith("bf16"))
        load_from_rank_zero(self.model, full, self.trainer.strategy.root_device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to save non-finite weights, so the last checkpoint on disk is always a good one. Each rank
        checks its own shards; all agree before any writes."""
        finite = all(
            bool(torch.isfinite(t.to_local() if isinstance(t, DTensor) else t).all())
            for t in checkpoint["state_dict"].values()
            if t.is_floating_point()
        )
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            self._diverged("the weights are not finite")

    def _diverged(self, what: str) -> None:
        hp = cast(AttributeDict, self.hparams)  # save_hyperparameters stores an AttributeDict
        raise FloatingPointError(
            f"{what} at step {self.global_step}: lower optim.lr (now {hp.lr}), raise "
            f"optim.warmup_steps, or keep gradient clipping on (trainer.gradient_clip_val); the last good "
            f"checkpoint is kept"
        )

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """`trainer.gradient_clip_val` applied here rather than by Lightning's precision plugin, which refuses any
        clipping with a fused optimizer under mixed precision (it cannot tell bf16, which has no loss scaler, from
        fp16). The gradients are unscaled by now wherever a scaler is used (never with a fused optimizer);
        under FSDP2 they are DTensors and the norm is the whole model's. The optimizer's order of parameters, as
        Lightning's: the same norm to the last bit."""
        if not gradient_clip_val:
            return
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(parameters, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(parameters, gradient_clip_val)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """AdamW with weight decay on all but norms and biases, grouped by name: under FSDP1 the shapes
        are flat 1-D views by the time this runs, so a rule by shape would decay nothing. Fused (one kernel for
        all parameters) on CUDA, unless fp16's loss scaler is in use: a fused step unscales inside itself, after
        the clipping. On the CPU the plain loop, which every CPU result was trained with."""
        hp = cast(AttributeDict, self.hparams)  # save_hyperparameters stores an AttributeDict
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, parameter in self.named_parameters():
            (no_decay if any(word in name for word in NO_DECAY) else decay).append(parameter)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
            fused=self.device.type == "cuda" and self.trainer.precision != "16-mixed",
        )

        def schedule(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / max(1, hp.total_steps - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
