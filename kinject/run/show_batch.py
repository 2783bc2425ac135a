"""Print the training batch of one optimizer step, decoded, with the injected facts marked.

    kinject-show-batch step=N [ids=true] [overrides...]

The overrides are train.py's, composed from the same config, so this shows exactly what that run
trains on at step N: sequences [N*B, (N+1)*B) whatever the device count. A streamed corpus is
replayed from the start of each lane, so late steps of a long run take a while to reach.
"""

from __future__ import annotations

import sys

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from kinject import CONF_DIR
from kinject.errors import ConfigError
from kinject.run.experiment import prepare

OPEN, CLOSE = "⟦", "⟧"


def show(cfg: DictConfig, step: int, ids: bool = False) -> str:
    experiment = prepare(cfg)
    budget = experiment.budget
    if not 0 <= step < budget.steps:
        raise ConfigError("step", f"a step of the run, 0 to {budget.steps - 1}", step)
    dataset = experiment.datamodule.dataset
    decode = experiment.tokenizer.decode
    lines = [
        f"step {step}: sequences {step * budget.batch_size} to {(step + 1) * budget.batch_size - 1}, "
        f"{budget.seq_len} tokens each; injected facts between {OPEN} {CLOSE}"
    ]
    for index in range(step * budget.batch_size, (step + 1) * budget.batch_size):
        item = dataset[index]
        tokens, used = item["input_ids"].tolist(), int(item["injected"])
        injected = f"{OPEN}{decode(tokens[:used])}{CLOSE}" if used else ""
        lines.append(f"\n--- sequence {index}: {used} injected tokens")
        lines.append(injected + decode(tokens[used:]))
        if ids:
            lines.append(f"ids: {tokens}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = dict(arg.split("=", 1) for arg in argv if arg.split("=", 1)[0] in ("step", "ids"))
    overrides = [arg for arg in argv if arg.split("=", 1)[0] not in ("step", "ids")]
    if not options.get("step", "").isdigit():
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    try:
        print(show(cfg, int(options["step"]), options.get("ids", "false").lower() == "true"))
    except ConfigError as error:
        print(f"bad config: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
