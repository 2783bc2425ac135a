"""The LightningModule: a Llama causal LM trained with AdamW, linear warmup and cosine decay."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from kinject.model import ModelSpec, build


class CausalLM(L.LightningModule):
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build(ModelSpec.from_config(model), vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ids = batch["input_ids"]
        loss = self.model(input_ids=ids, labels=ids).loss
        if not torch.isfinite(loss):
            self._diverged(f"training loss is {loss.item()}")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Under FSDP the norm must span every shard, and Lightning refuses clip-by-norm there: clip
        through the sharded root module's own `clip_grad_norm_`, Lightning's path everywhere else."""
        sharded = self.trainer.strategy.model
        if gradient_clip_val and gradient_clip_algorithm != "value" and hasattr(sharded, "clip_grad_norm_"):
            sharded.clip_grad_norm_(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to save non-finite weights, so the last checkpoint on disk is always a good one."""
        if not all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point()):
            self._diverged("the weights are not finite")

    def _diverged(self, what: str) -> None:
        raise FloatingPointError(
            f"{what} at step {self.global_step}: lower optim.lr (now {self.hparams.lr}), raise "
            f"optim.warmup_steps, or keep gradient clipping on (trainer.gradient_clip_val); the last good "
            f"checkpoint is kept"
        )

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay = [p for p in self.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )

        def schedule(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / max(1, hp.total_steps - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
