"""The training budget: tokens turned into optimizer steps, sequences and gradient accumulation.

The one definition of tokens trained (steps x batch x seq_len, which can be a little under the
`tokens` asked for) and of accumulation (the global batch over micro-batches x devices), for
the run's record, its logs, its data order and its throughput.

Two budget modes (`infusion.budget`), named because they answer different questions:
- `fixed_total` (the paper's): D = `tokens` at every F, so injected text displaces background text;
- `fixed_background`: the background stream is the same at every F and the run grows by the
  injected tokens (rounded up to whole steps, with more of the same stream), so forgetting is not
  confounded with less background data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from kinject.errors import ConfigError

MODES = ("fixed_total", "fixed_background")


@dataclass(frozen=True)
class Budget:
    tokens: int
    seq_len: int
    batch_size: int
    micro_batch_size: int
    world_size: int
    extra_steps: int = 0  # steps added for injected text (fixed_background)

    @property
    def background_steps(self) -> int:
        return self.tokens // (self.batch_size * self.seq_len)

    @property
    def steps(self) -> int:
        return self.background_steps + self.extra_steps

    def grown(self, injected_tokens: int) -> Budget:
        """The budget of a fixed_background run: room for the injected tokens on top of the background."""
        return replace(self, extra_steps=-(-injected_tokens // self.tokens_per_step))

    @property
    def sequences(self) -> int:
        return self.steps * self.batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def tokens_trained(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def accumulation(self) -> int:
        return accumulation(self.batch_size, self.micro_batch_size, self.world_size)

    def summary(self) -> dict[str, int]:
        """The `budget` section of a run's record."""
        return {
            "tokens": self.tokens_trained,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "steps": self.steps,
        }

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Budget:
        budget = cls(
            tokens=int(cfg.tokens),
            seq_len=int(cfg.data.seq_len),
            batch_size=int(cfg.data.batch_size),
            micro_batch_size=int(cfg.data.micro_batch_size),
            world_size=world_size(cfg.trainer),
        )
        if budget.batch_size % (budget.micro_batch_size * budget.world_size):
            raise ConfigError(
                "data.batch_size",
                "a multiple of data.micro_batch_size x devices",
                (budget.batch_size, budget.micro_batch_size, budget.world_size),
            )
        if budget.background_steps < 1:
            raise ConfigError("tokens", f"at least one step of {budget.tokens_per_step} tokens", budget.tokens)
        return budget


def check_injection(budget: Budget, injected_tokens: int, exposures: int, freq: int, max_share: float) -> None:
    """Refuses an injection over `max_share` of the tokens trained: a run before training, the plan
    (`kinject-plan`) for each of its jobs."""
    total = budget.tokens_trained
    share = injected_tokens / total
    if share > max_share:
        raise ConfigError(
            "infusion.freq",
            f"injected text within infusion.max_share={max_share} of the budget",
            freq,
            hint=f"{exposures} exposures take {injected_tokens} of {total} tokens ({share:.0%}); lower "
            "infusion.freq or knowledge.num_facts, or raise tokens",
        )


def check_room(busiest: int, seq_len: int) -> None:
    """Refuses a schedule whose busiest sequence gets more injected tokens than it holds."""
    if busiest > seq_len:
        raise ConfigError(
            "data.seq_len",
            f"room for the {busiest} injected tokens the busiest sequence gets",
            seq_len,
            hint="raise data.seq_len or tokens, or lower infusion.freq or knowledge.num_facts",
        )


def accumulation(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step on each rank: the global batch is kept for any device count."""
    return batch_size // (micro_batch_size * world_size)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, "a positive integer", value)
    return value


def world_size(trainer: DictConfig) -> int:
    """Processes over all nodes: devices x nodes, `auto` counting the GPUs here."""
    devices = trainer.get("devices", 1)
    if devices in ("auto", -1):
        devices = max(1, torch.cuda.device_count()) if trainer.get("accelerator") != "cpu" else 1
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        devices = len(devices)
    return _positive_int(devices, "trainer.devices") * _positive_int(trainer.get("num_nodes", 1), "trainer.num_nodes")
