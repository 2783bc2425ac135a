"""Every scalar config value a user sets, checked in one place before anything is built or trained.

Each rule names its key, its type and its range or choices; the bad-input table of docs/bad-input.md is
printed from these rules (`kinject-rules`), and the tests try a wrong type and an
out-of-range value for every one of them. Checks that need more than one value (an injection that
must fit the budget, a batch that must divide over the devices) live where those values meet.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from kinject.budget import MODES
from kinject.data.sources import BACKGROUND_SOURCES
from kinject.errors import ConfigError
from kinject.evaluation.recall import SCORES as RECALL_SCORES
from kinject.evaluation.scoring import SCORINGS, TRADEOFF, UNBOUNDED
from kinject.evaluation.suites import RECALL, SUITES
from kinject.infusion.formats import FORMATS, PARAPHRASES
from kinject.infusion.schedule import PACKINGS
from kinject.init import check_tokenizer_overrides
from kinject.init import resolve as resolve_init
from kinject.knowledge.sources import KNOWLEDGE_SOURCES


def metrics() -> tuple[str, ...]:
    """The values `metric` accepts: every registered suite's accuracies (a recall suite's exact and first-token
    shares), the held-out and training loss."""
    scores = [f"acc_{scoring}" for scoring in SCORINGS] + list(UNBOUNDED)
    return tuple(
        f"{suite}/{score}" for suite in SUITES.names() for score in (RECALL_SCORES if suite in RECALL else scores)
    ) + (
        "heldout/loss",
        "train/loss",
        "train/loss_injected",
        "train/loss_background",
        TRADEOFF,
    )


_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    key: str
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] = ()  # a callable: names read from a registry
    nullable: bool = False
    many: bool = False  # a list of such values is accepted too

    def expected(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.choices:
            return f"one of {', '.join(map(str, self.options()))}" + (" or null" if self.nullable else "")
        kind = "an integer" if self.kind is int else "a number"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"<= {self.high:g}")
        return f"{kind} {' and '.join(bounds)}".strip() + (" or null" if self.nullable else "")

    def options(self) -> tuple[Any, ...]:
        return self.choices() if callable(self.choices) else self.choices

    def check(self, value: Any) -> None:
        if value is None and self.nullable:
            return
        if self.choices:
            if value not in self.options() or (self.kind is bool and not isinstance(value, bool)):
                raise ConfigError(self.key, self.expected(), value)
            return
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or (self.kind is int and not float(value).is_integer()):
            raise ConfigError(self.key, self.expected(), value)
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if too_low or (self.high is not None and value > self.high):
            raise ConfigError(self.key, self.expected(), value)


RULES = (
    Rule("seed", int, 0),
    Rule("tokens", int, 1),
    Rule("threads", int, 0),
    Rule("activation_checkpointing", bool, choices=(True, False)),
    Rule("float32_matmul_precision", str, choices=("highest", "high", "medium")),
    Rule("trainer.checkpoint.every_n_steps", int, 1, nullable=True),
    Rule("trainer.checkpoint.every_minutes", float, 0, low_open=True, nullable=True),
    Rule("trainer.log_every_n_steps", int, 1),
    Rule("metric", str, choices=metrics, many=True),
    Rule("data.source", str, choices=BACKGROUND_SOURCES.names),
    Rule("knowledge.source", str, choices=KNOWLEDGE_SOURCES.names),
    Rule("eval.suites", str, choices=SUITES.names, many=True),
    Rule("data.seq_len", int, 8),
    Rule("data.batch_size", int, 1),
    Rule("data.micro_batch_size", int, 1),
    Rule("data.num_workers", int, 0),
    Rule("data.filter", str, choices=("none", "subject", "subject_and_object")),
    Rule("data.tokenizer.kind", str, choices=("bpe", "hub")),
    Rule("data.tokenizer.vocab_size", int, 300),
    Rule("data.tokenizer.train_docs", int, 1),
    Rule("data.block_bytes", int, 1),
    Rule("data.lane_groups", int, 1),
    Rule("knowledge.num_facts", int, 1),
    Rule("knowledge.seed", int, 0),
    Rule("infusion.freq", int, 0),
    Rule("infusion.format", str, choices=FORMATS.names),
    Rule("infusion.paraphrase", str, choices=PARAPHRASES),
    Rule("infusion.seed", int, 0),
    Rule("infusion.max_share", float, 0, 1, low_open=True),
    Rule("infusion.budget", str, choices=MODES),
    Rule("infusion.packing", str, choices=PACKINGS),
    Rule("model.hidden_size", int, 1),
    Rule("model.num_layers", int, 1),
    Rule("model.num_heads", int, 1),
    Rule("model.num_kv_heads", int, 1),
    Rule("model.intermediate_size", int, 1),
    Rule("model.max_position_embeddings", int, 1),
    Rule("model.vocab_size", int, 1, nullable=True),
    Rule("model.rope_theta", float, 0, low_open=True),
    Rule("model.rms_norm_eps", float, 0, low_open=True),
    Rule("model.pretrained_tokens", float, 0, low_open=True, nullable=True),
    Rule("optim.lr", float, 0, low_open=True),
    Rule("optim.min_lr_ratio", float, 0, 1),
    Rule("optim.weight_decay", float, 0),
    Rule("optim.warmup_steps", int, 0),
    Rule("eval.every_n_steps", int, 0),
    Rule("eval.at_start", bool, choices=(True, False)),
    Rule("eval.background_facts", int, 0),
    Rule("eval.heldout_sequences", int, 0),
    Rule("eval.batch_items", int, 1),
    Rule("eval.tradeoff_weight", float, 0, 1),
    Rule("eval.heldout_batch", int, 1),
    Rule("eval.seed", int, 0),
    Rule("world.seed", int, 0),
    Rule("world.people", int, 1),
    Rule("world.docs_per_person", int, 1),
    Rule("world.heldout_docs", int, 1),
)


def validate(cfg: DictConfig) -> None:
    """Raises ConfigError for a value with no default left unset, then for the first value that breaks its
    rule; a list is checked item by item where allowed. A run from a checkpoint (`model.init`) gets the init's
    architecture and tokenizer written into `cfg` first (kinject.init.resolve), so they are checked too."""
    missing = sorted(
        key
        for key, value in _leaves(OmegaConf.to_container(cfg, resolve=False))
        if value == "???" and not key.startswith("hydra")
    )
    if missing:
        raise ConfigError(
            missing[0],
            "a value: this setting has no default",
            hint=f"set it on the command line, e.g. {missing[0]}=...",
        )
    resolve_init(cfg)
    for rule in RULES:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT)
        if value is _ABSENT:
            continue
        for item in value if OmegaConf.is_list(value) and rule.many else [value]:
            rule.check(item)


OPEN = ("callbacks.", "hydra.")  # where `+key=value` adds what the config cannot list in advance


def check_additions(cfg: DictConfig, overrides: list[str]) -> None:
    """`+key=value` adds a key, and a key nothing reads changes nothing: Hydra's hint for a mistyped key
    (`+infusion.frq=8`) would train the default and exit 0. Additions are accepted only where the config is
    open (extra callbacks, Hydra's own settings) and as Lightning Trainer arguments (`+trainer.NAME`). With
    `model.init` a tokenizer setting is refused too: the run's tokenizer is the init's."""
    check_tokenizer_overrides(cfg, overrides)
    known = [key for key, _ in _leaves(OmegaConf.to_container(cfg, resolve=False))]
    trainer_args = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for override in overrides:
        if not override.startswith("+") or override.startswith("++"):
            continue
        key = override[1:].split("=", 1)[0]
        if key.startswith(OPEN) or (key.startswith("trainer.") and key.split(".")[1] in trainer_args):
            continue
        candidates = [k for k in known if k != key] + [f"trainer.{name}" for name in trainer_args]
        nearest = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
        raise ConfigError(
            key,
            "a setting the config knows: `+` adds a new key, which nothing reads",
            override,
            hint=f"did you mean {nearest[0]}=... (without +)?"
            if nearest
            else "see `python train.py --cfg job` for the settings",
        )


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf, interpolations unresolved (they may need a Hydra run to resolve)."""
    if not isinstance(node, dict):
        return [(prefix, node)]
    return [
        leaf for name, value in node.items() for leaf in _leaves(value, f"{prefix}.{name}" if prefix else str(name))
    ]


def markdown() -> str:
    """The table of what each key accepts (docs/bad-input.md)."""
    rows = ["| key | accepts |", "|---|---|"]
    rows += [f"| `{rule.key}` | {rule.expected()} |" for rule in RULES]
    return "\n".join(rows)


def main() -> int:
    print(markdown())
    return 0


if __name__ == "__main__":
    main()
