"""Loaders that turn a sweep's results into one table of runs, whatever the source.

Three sources: the results.json files training runs write (with per-item outcomes, which drive
the bootstrap), W&B runs (means only) and a plain CSV `model,params,tokens,freq,acc[,seed,n_items]`
(numbers published elsewhere). `to_groups` then cuts the table into P(F) curves for
kinject.law.curves.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from kinject.fingerprint import settings
from kinject.law.curves import CHANCE, Curve, Group
from kinject.results import FILENAME, scan

DEFAULT_METRIC = "memorization/acc_token"
UNBOUNDED = ("margin", "gold_logprob")  # per-item scores that rise with memorization and have no ceiling
RECALL = ("exact", "first_token")  # generative recall (kinject.evaluation.recall): accuracies with no chance floor
# what a fit spans, not a condition; infusion.seed follows the run's seed by default, so it is a replicate axis too
AXES = ("infusion.freq", "infusion.format", "infusion.paraphrase", "seed", "infusion.seed", "tokens")
PARAMS = {"non_embedding": "non-embedding parameters", "total": "all parameters, embeddings included"}
# CausalLM's hyperparameters, which Lightning logs into a W&B run's config beside train.py's: optim.* again, the
# tokenizer's vocabulary, and step counts that follow the budget (under fixed_background they grow with F)
MODULE_HPARAMS = ("lr", "min_lr_ratio", "weight_decay", "betas", "warmup_steps", "total_steps", "vocab_size")
CSV_COLUMNS = ("model", "params", "tokens", "freq", "acc")
CSV_OPTIONAL = ("seed", "n_items")


class TableError(ValueError):
    """Input that cannot become a table; the message names the file (and line) and what is expected."""


@dataclass(frozen=True)
class Run:
    """One trained model evaluated at one frequency."""

    model: str
    params: Mapping[str, float]  # "total" and "non_embedding" (runs, W&B) or "given" (CSV)
    tokens: float
    freq: float
    acc: float
    seed: int | None = None
    n_items: int | None = None
    fact_ids: tuple[int, ...] | None = None
    items: np.ndarray | None = None  # per-item 0/1 outcomes
    condition: tuple[tuple[str, str], ...] = ()  # format, paraphrase and every other setting but the axes
    source: str = ""


@dataclass
class Table:
    runs: list[Run]
    notes: list[str] = field(default_factory=list)  # runs skipped, and why
    bounded: bool = True  # accuracies; False for an unbounded score (kinject.law.curves.Curve.bounded)
    chance: float = CHANCE  # an accuracy's chance level: 0 for generative recall

    def add(self, found: Run | str) -> None:
        """A run, or the note saying why one was skipped."""
        if isinstance(found, Run):
            self.runs.append(found)
        else:
            self.notes.append(found)


def _metric_parts(metric: str) -> tuple[str, str]:
    """'memorization/acc_token' -> ('memorization', 'correct_token'), 'memorization/margin' ->
    ('memorization', 'margin'): where its per-item values live in results.json."""
    match = re.fullmatch(r"(\w+)/acc_(\w+)", metric)
    if match:
        return match[1], f"correct_{match[2]}"
    match = re.fullmatch(rf"(\w+)/({'|'.join(UNBOUNDED + RECALL)})", metric)
    if match:
        return match[1], match[2]
    raise TableError(
        f"--metric {metric!r}: expected an accuracy 'SUITE/acc_SCORE' (e.g. {DEFAULT_METRIC}), an "
        f"unbounded score 'SUITE/{{{','.join(UNBOUNDED)}}}' (e.g. memorization/margin) or a recall "
        f"'SUITE/{{{','.join(RECALL)}}}' (e.g. recall/exact)"
    )


def is_bounded(metric: str) -> bool:
    column = _metric_parts(metric)[1]
    return column.startswith("correct_") or column in RECALL


def chance(metric: str) -> float:
    """The accuracy a model that knows nothing reaches: a quarter of 4-way multiple choice, none of recall."""
    return 0.0 if _metric_parts(metric)[1] in RECALL else CHANCE


def _table(metric: str) -> Table:
    return Table([], bounded=is_bounded(metric), chance=chance(metric))


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    """A nested config value by dotted key; a flat dotted key also works (older W&B logging)."""
    if key in config:
        return config[key]
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _condition(format_: Any, paraphrase: Any, config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Format and paraphrase, then every other deciding setting of the run's config (data, knowledge, world,
    optimizer, ...) but the axes of the fit (model size, D, F, seed): runs that differ in any of them are
    never pooled into one curve (to_groups keeps those that vary across the table)."""
    named = [(k, str(v)) for k, v in (("format", format_), ("paraphrase", paraphrase)) if v is not None]
    from_init = _lookup(config, "model.init") is not None
    left_out = ("model.", "derived.", *(("data.tokenizer.",) if from_init else ()))  # an init's tokenizer is its own
    rest = [
        (key, json.dumps(value, sort_keys=True, default=str))
        for key, value in settings(config).items()
        if key not in AXES and not key.startswith(left_out)
    ]
    return tuple(named + [("start", "init" if from_init else "random")] + rest)


def _model(name: Any, config: Mapping[str, Any]) -> str:
    """A P(F) curve's model: its name, and for a run from a checkpoint (kinject.init) the init and its pretraining
    tokens when given, so that runs from different inits never pool (their law across sizes is one condition)."""
    init, pretrained = _lookup(config, "model.init"), _lookup(config, "model.pretrained_tokens")
    if init is None:
        return str(name)
    key = str(name) if name == init else f"{name} from {init}"
    return key if pretrained is None else f"{key} ({float(pretrained):.3g} tokens)"


def _curve_tokens(budget: Mapping[str, Any]) -> float:
    """D of a run's P(F) curve: the tokens trained, but under fixed_background the background budget, the
    same at every F (the run grows by its injected tokens, in whole steps)."""
    if budget.get("mode") != "fixed_background":
        return float(budget["tokens"])
    step = budget["batch_size"] * budget["seq_len"]
    return float(budget["background_tokens"] // step * step)


def _from_results(path: Path, payload: dict[str, Any], metric: str) -> Run | str:
    """A Run from a complete run's record, or the reason to skip it."""
    value = payload["metrics"].get(metric)
    if value is None or not np.isfinite(value):
        return f"{path}: no value for {metric}"
    suite, column = _metric_parts(metric)
    outcomes = payload.get("items", {}).get(suite, {})
    items = np.asarray(outcomes[column], float) if outcomes.get(column) else None
    infusion, model = payload["infusion"], payload["model"]
    return Run(
        model=_model(model["name"], payload.get("config", {})),
        params={k: float(model[f"params_{k}"]) for k in PARAMS if model.get(f"params_{k}") is not None},
        tokens=_curve_tokens(payload["budget"]),
        freq=float(infusion["freq"]),
        acc=float(value),
        seed=payload["run"].get("seed"),
        n_items=None if items is None else items.size,
        fact_ids=tuple(outcomes["fact_id"]) if items is not None and "fact_id" in outcomes else None,
        items=items,
        condition=_condition(infusion.get("format"), infusion.get("paraphrase"), payload.get("config", {})),
        source=str(path),
    )


def load_runs(dirs: Iterable[str | Path], metric: str = DEFAULT_METRIC, metrics_from: str | None = None) -> Table:
    """Every results.json under the given folders (Hydra multirun folders, or single runs). `metrics_from`: each
    run's metrics and per-item outcomes from that file beside its record (evaluate.py's `out=`, a re-scoring)."""
    table = _table(metric)
    held: set[str] = set()
    folders = list(map(Path, dirs))
    for folder in folders:
        if not folder.is_dir():
            raise TableError(f"{folder}: not a folder of runs")
        found = list(scan([folder]))
        if not found:
            raise TableError(f"{folder}: no {FILENAME} found under it")
        for record in found:
            if isinstance(record, str):
                table.notes.append(record)
                continue
            payload = record.data if metrics_from is None else _rescored(record.path, record.data, metrics_from)
            if isinstance(payload, str):
                table.notes.append(payload)
                continue
            held.update(payload.get("metrics") or ())
            try:
                table.add(_from_results(record.path, payload, metric))
            except (KeyError, TypeError, ValueError) as error:
                table.add(f"{record.path}: malformed ({type(error).__name__}: {error})")
    if held and metric not in held:
        raise _unknown_metric(metric, held, f"no complete run under {', '.join(map(str, folders))}")
    return table


def _rescored(path: Path, payload: dict[str, Any], name: str) -> dict[str, Any] | str:
    """The record with the metrics and items of the re-scoring `name` beside it, or why it is skipped."""
    rescored = path.parent / name
    if not rescored.is_file():
        return f"{path}: no {name} beside it"
    try:
        other = json.loads(rescored.read_text())
        return {**payload, "metrics": other["metrics"], "items": other.get("items", {})}
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        return f"{rescored}: not a file evaluate.py wrote ({type(error).__name__}: {error})"


def _unknown_metric(metric: str, held: Iterable[str], where: str) -> TableError:
    """The metric no run holds, with the ones they hold that fit_law can fit."""
    fittable = sorted(key for key in held if _fittable(key))
    return TableError(f"--metric {metric!r}: {where} holds it; they hold {', '.join(fittable) or 'no fittable metric'}")


def _fittable(key: str) -> bool:
    try:
        _metric_parts(key)
    except TableError:
        return False
    return True


def load_wandb(
    path: str, metric: str = DEFAULT_METRIC, group: str | None = None, tag: str | None = None, api: Any = None
) -> Table:
    """Finished runs of a W&B project (means only: W&B holds no per-item outcomes). `api` is a
    wandb.Api or anything with the same .runs(path, filters=...), so tests need no network."""
    suite, _ = _metric_parts(metric)
    filters: dict[str, Any] = {}
    if group:
        filters["group"] = group
    if tag:
        filters["tags"] = {"$in": [tag]}
    try:
        if api is None:
            import wandb

            api = wandb.Api()
        runs = list(api.runs(path, filters=filters))
    except Exception as error:  # auth, network, a bad path: W&B raises many types, all mean "cannot read"
        raise TableError(f"wandb:{path}: cannot read runs ({type(error).__name__}: {error})") from None
    table = _table(metric)
    held: set[str] = set()
    for run in runs:
        where = f"wandb:{path}/{run.name}"
        if run.state != "finished":
            table.notes.append(f"{where}: state {run.state!r}, not finished")
            continue
        held.update(key for key in run.summary.keys() if isinstance(key, str))
        try:
            table.add(_from_wandb(run.config, run.summary, metric, suite, where))
        except (KeyError, TypeError, ValueError) as error:
            table.add(f"{where}: malformed ({type(error).__name__}: {error})")
    if not table.runs and not table.notes:
        raise TableError(f"wandb:{path}: no runs match filters {filters or '(none)'}")
    if held and metric not in held:
        raise _unknown_metric(metric, held, f"no finished run of wandb:{path}")
    return table


def _from_wandb(
    config: Mapping[str, Any], summary: Mapping[str, Any], metric: str, suite: str, where: str
) -> Run | str:
    """A Run from a finished W&B run (train.py logs its config with `derived`: the record's model, budget and
    infusion sections in one mapping), or the reason to skip it. D as the results.json loader takes it."""
    derived = _lookup(config, "derived") or {}
    needed = {
        metric: summary.get(metric),
        "model.name": _lookup(config, "model.name"),
        "infusion.freq": _lookup(config, "infusion.freq"),
        "derived.tokens": derived.get("tokens"),
    }
    missing = [k for k, v in needed.items() if v is None]
    if missing:
        return f"{where}: no {', '.join(missing)}"
    n_items = summary.get(f"{suite}/n_items")
    settings = {key: value for key, value in config.items() if key not in MODULE_HPARAMS}
    return Run(
        model=_model(needed["model.name"], config),
        params={k: float(derived[f"params_{k}"]) for k in PARAMS if derived.get(f"params_{k}") is not None},
        tokens=_curve_tokens(derived),
        freq=float(needed["infusion.freq"]),
        acc=float(needed[metric]),
        seed=_lookup(config, "seed"),
        n_items=None if n_items is None else int(n_items),
        condition=_condition(_lookup(config, "infusion.format"), _lookup(config, "infusion.paraphrase"), settings),
        source=where,
    )


def _number(path: Path, line: int, column: str, text: str | None, integer: bool = False) -> float | int:
    try:
        value = float(text)  # type: ignore[arg-type]  # None (a short row) is caught as TypeError below
    except (TypeError, ValueError):
        raise TableError(f"{path}, line {line}: column {column!r} must be a number, got {text!r}") from None
    return int(value) if integer else value


def load_csv(path: str | Path) -> Table:
    """Rows `model,params,tokens,freq,acc` (+ optional `seed`, `n_items`); params is N as given."""
    path = Path(path)
    try:
        reader = csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines())  # a BOM (Excel's CSV) is allowed
    except (OSError, UnicodeDecodeError) as error:
        raise TableError(f"{path}: cannot read as text ({error})") from None
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise TableError(
            f"{path}, line 1: missing column(s) {', '.join(missing)}; expected header "
            f"{','.join(CSV_COLUMNS)} (optional: {','.join(CSV_OPTIONAL)})"
        )
    runs = []
    for row in reader:
        line = reader.line_num
        values = {c: _number(path, line, c, row[c]) for c in CSV_COLUMNS[1:]}
        optional: dict[str, Any] = {  # Run's int keywords seed and n_items
            c: _number(path, line, c, row[c], integer=True) for c in CSV_OPTIONAL if row.get(c) not in (None, "")
        }
        if not 0 <= values["acc"] <= 1 or values["freq"] < 0 or values["params"] <= 0 or values["tokens"] <= 0:
            raise TableError(
                f"{path}, line {line}: expected 0 <= acc <= 1, freq >= 0, params > 0 and tokens > 0, got {values}"
            )
        if not row["model"]:
            raise TableError(f"{path}, line {line}: empty model name")
        runs.append(
            Run(
                row["model"],
                {"given": values["params"]},
                values["tokens"],
                values["freq"],
                values["acc"],
                source=f"{path}:{line}",
                **optional,
            )
        )
    if not runs:
        raise TableError(f"{path}: header but no rows")
    return Table(runs)


def merge(tables: Iterable[Table]) -> Table:
    tables = list(tables)
    if len({(t.bounded, t.chance) for t in tables}) > 1:
        raise TableError(
            "an accuracy of multiple choice (CSV or --metric SUITE/acc_SCORE), a recall score and an unbounded "
            "score cannot be fitted together"
        )
    return Table(
        [r for t in tables for r in t.runs],
        [n for t in tables for n in t.notes],
        all(t.bounded for t in tables),
        tables[0].chance if tables else CHANCE,
    )


def params_definition(table: Table, kind: str) -> str:
    """What N means in this table, for the report: the choice, and CSV counts taken as given."""
    text = f"N = {PARAMS[kind]} ({kind})"
    if any("given" in r.params for r in table.runs):
        text += "; CSV rows: N as given in column params"
    return text


def _label(model: str, tokens: float, condition: tuple[tuple[str, str], ...], varying: set[str]) -> str:
    parts = [model] + ([f"D={tokens:.3g}"] if "tokens" in varying else [])
    return " ".join(parts + [f"{k}={v}" for k, v in condition if k in varying])


def to_groups(table: Table, params: str = "non_embedding") -> list[Group]:
    """One P(F) curve per (model, D, condition); seeds are replicates. Only the settings
    that vary across the table appear in labels and conditions (one law is fitted per condition)."""
    if not table.runs:
        raise TableError("no usable runs" + (": " + "; ".join(table.notes[:5]) if table.notes else ""))
    settings: defaultdict[str, set[float | str]] = defaultdict(set)
    for run in table.runs:
        settings["tokens"].add(run.tokens)
        for key, value in run.condition:
            settings[key].add(value)
    varying = {k for k, v in settings.items() if len(v) > 1}
    buckets: dict[tuple, list[Run]] = defaultdict(list)
    for run in table.runs:
        condition = tuple((k, v) for k, v in run.condition if k in varying)
        buckets[(run.model, run.tokens, condition)].append(run)
    return [
        _group(model, tokens, condition, runs, params, varying, table.bounded, table.chance)
        for (model, tokens, condition), runs in sorted(buckets.items())
    ]


def _group(
    model: str,
    tokens: float,
    condition: tuple[tuple[str, str], ...],
    runs: list[Run],
    params: str,
    varying: set[str],
    bounded: bool,
    chance: float = CHANCE,
) -> Group:
    counts = {r.params.get(params, r.params.get("given")) for r in runs}
    if None in counts:
        bad = next(r for r in runs if r.params.get(params, r.params.get("given")) is None)
        raise TableError(
            f"{bad.source}: no {params} parameter count (try --params "
            f"{'total' if params == 'non_embedding' else 'non_embedding'})"
        )
    sizes = cast(set[float], counts)  # None ruled out above
    if len(sizes) > 1:
        raise TableError(f"model {model!r}: runs disagree on its parameter count ({sorted(sizes)})")
    runs = sorted(runs, key=lambda r: (r.freq, r.seed is None, r.seed or 0))
    blocks: dict[tuple, list[int]] = defaultdict(list)  # runs scored on the same facts, at every F and seed
    for i, run in enumerate(runs):
        if run.items is not None:
            blocks[run.fact_ids or (run.source,)].append(i)
    paired = tuple((np.array(idx), np.stack([cast(np.ndarray, runs[i].items) for i in idx])) for idx in blocks.values())
    n_items = [np.nan if r.n_items is None or not bounded else r.n_items for r in runs]
    curve = Curve(
        np.array([r.freq for r in runs]),
        np.array([r.acc for r in runs]),
        np.array(n_items, float),
        paired,
        bounded,
        chance,
    )
    return Group(_label(model, tokens, condition, varying), model, sizes.pop(), tokens, condition, curve)
