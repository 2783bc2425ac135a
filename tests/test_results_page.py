"""Every number on docs/results/README.md is computed here from the committed files beside it (runs tables,
fit_law and regime reports, the power table of docs/fit_law.md), with the rounding the page uses: a page
edited by hand, or data re-committed without the page, fails. Numbers the page holds outside these phrases
fail too, except in code, commands, file names, headings, figure references and a few structural numbers."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest

from kinject.law.curves import CHANCE
from kinject.law.peak import ALPHA
from kinject.law.scaling import ALPHA_MAX
from tests.conftest import ROOT

RESULTS = ROOT / "docs/results"
PAGE = RESULTS / "README.md"
ONE_M, TWO_M = "999424", "1998848"
Row = dict[str, str]


@cache
def table(name: str) -> tuple[Row, ...]:
    with open(RESULTS / name, newline="") as handle:
        return tuple(csv.DictReader(handle))


@cache
def report(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def setting(packing: str = "block", budget: str = "fixed_total", lr: str = "0.003", tokens: str = ONE_M) -> Row:
    """A screen setting as runs.csv spells it; a fixed background grows the run with F, so D is not matched there."""
    chosen = {"packing": packing, "budget_mode": budget, "lr": lr, "num_facts": "120", "window": "0.0-1.0"}
    return chosen if budget == "fixed_background" else {**chosen, "tokens": tokens}


BLOCK = setting()
BLOCK_FIXED_BACKGROUND = setting(budget="fixed_background")
BLOCK_LR = setting(lr="0.01")
BLOCK_LR_FIXED_BACKGROUND = setting(budget="fixed_background", lr="0.01")
SHUFFLED = setting(packing="shuffled_block")


def seeds(name: str, column: str, freq: int, model: str, where: Row | None = None) -> list[float]:
    rows = [
        r
        for r in table(name)
        if r["model"] == model and float(r["freq"]) == freq and all(r[k] == v for k, v in (where or {}).items())
    ]
    assert rows, f"{name}: no runs of {model} at F = {freq} with {where}"
    return [float(r[column]) for r in rows]


def mean(name: str, column: str, freq: int, model: str, where: Row | None = None) -> float:
    values = seeds(name, column, freq, model, where)
    return sum(values) / len(values)


def peak(name: str, column: str, model: str, where: Row) -> tuple[int, float]:
    """The F of the highest mean, and that mean."""
    freqs = {
        int(float(r["freq"])) for r in table(name) if r["model"] == model and all(r[k] == v for k, v in where.items())
    }
    return max(((f, mean(name, column, f, model, where)) for f in freqs), key=lambda pair: pair[1])


C, RECALL, MC = "collapse_ladder/runs.csv", "recall/exact", "memorization/acc_token"


BACKGROUND_RECALL = "background_recall/exact"


def ladder_verdicts(metric: str) -> list[dict[str, Any]]:
    """Per size, the verdict of the collapse ladder's regime report on `metric`."""
    return next(r for r in report("collapse_ladder/regimes.json") if r["metric"] == metric)["verdicts"]


def ladder_fall(metric: str, model: str) -> float:
    """The shape test's p-value for the fall, from the collapse ladder's regime report."""
    return next(v for v in ladder_verdicts(metric) if v["model"] == model)["p_fall"]


def both_tiny() -> tuple[str]:
    """`tiny`'s p-value of the fall, said once for recall and multiple choice: they must read the same."""
    recall, choice = p(ladder_fall(RECALL, "tiny")), p(ladder_fall(MC, "tiny"))
    return (recall if recall == choice else f"{recall} (recall), {choice} (multiple choice)",)


def fall_from_top(metric: str, model: str) -> float:
    """The top mean over F less the mean at the largest F."""
    freqs = sorted({int(float(r["freq"])) for r in table(C) if r["model"] == model})
    means = [mean(C, metric, f, model) for f in freqs]
    return max(means) - means[-1]


def two(x: float) -> str:
    return f"{x:.2f}"


def whole(x: float) -> str:
    return f"{x:.0f}"


def pct(x: float) -> str:
    return f"{x * 100:+.0f}%"


def p(value: float) -> str:
    """A p-value as the page writes it, after "p "."""
    return "< 0.001" if value < 0.001 else f"= {value:.3f}"


def regime(metric: str, model: str, packing: str = "block", budget: str = "fixed_total", lr: str = "0.003") -> Any:
    wanted = f"infusion.budget={budget} infusion.packing={packing} infusion.window=[0.0, 1.0] optim.lr={lr}"
    row = next(r for r in report("screen/regimes.json") if r["setting"] == wanted and r["metric"] == metric)
    return next(v for v in row["verdicts"] if v["model"] == model)


def fitted(name: str, model: str, tokens: str = ONE_M, lr: str = "0.003", budget: str = "fixed_total") -> Any:
    """One model group of a fit_law report on the `block` screen."""
    for group in report(name)["models"]:
        condition = group["condition"]
        if (
            group["model"] == model
            and group["tokens"] == float(tokens)
            and condition["infusion.packing"] == '"block"'
            and condition["infusion.budget"] == f'"{budget}"'
            and condition["optim.lr"] == lr
            and condition["knowledge.num_facts"] == "120"
        ):
            return group
    raise LookupError(f"{name}: no block group of {model} at D = {tokens}, lr {lr}")


def f_star(name: str, model: str, **where: str) -> tuple[str, str, str]:
    group = fitted(name, model, **where)
    lo, hi = group["f_star_ci"]
    return whole(group["f_star"]), whole(lo), whole(hi)


def law(name: str) -> Any:
    return next(entry for entry in report(name)["laws"] if entry["status"] == "ok")


def holdout(name: str) -> Any:
    return law(name)["validation"]["leave_largest_out"]["holdouts"][0]


def constant(name: str) -> float:
    """The constant predictor of the held-out size: the geometric mean of the smaller sizes' F*."""
    entry = law(name)
    top = entry["validation"]["leave_largest_out"]["largest_train_params"]
    train = [point["f_star"] for point in entry["points"] if point["params"] <= top]
    return math.exp(sum(map(math.log, train)) / len(train))


def peak_ratios() -> tuple[float, float]:
    """F* = b/c over the model-free peak, lowest and highest, over the groups the shape-only laws are fitted on."""
    ratios = [
        group["f_star"] / group["f_star_model_free"]
        for name in ("screen/shape_only/extraction.json", "screen/shape_only/memorization.json")
        for point in law(name)["points"]
        for group in report(name)["models"]
        if group["group"] == point["group"]
    ]
    return min(ratios), max(ratios)


def power(seeds_: int, facts: int = 120) -> tuple[str, ...]:
    """The verdict's power table in docs/fit_law.md: plateau, fall of 0.10, fall of 0.15."""
    text = (ROOT / "docs/fit_law.md").read_text()
    found = re.search(rf"^\s*\| {facts} \| {seeds_} \| (\d+%) \| (\d+%) \| (\d+%) \|", text, re.M)
    assert found, f"docs/fit_law.md has no power row for {facts} facts and {seeds_} seeds"
    return found.groups()


def sizes() -> dict[str, str]:
    """Non-embedding parameters per size, as the page writes them."""
    counts = {r["model"]: int(r["params_non_embedding"]) for r in table("screen/runs.csv")}
    return {m: f"{n / 1e3:.0f}k" if n < 1e5 else f"{n / 1e6:.2f}M" for m, n in counts.items()}


def share(name: str, column: str, freq: int, model: str, where: Row | None = None) -> str:
    return two(mean(name, column, freq, model, where))


def seed_range(name: str, column: str, freq: int, model: str, where: Row | None = None) -> tuple[str, str]:
    values = seeds(name, column, freq, model, where)
    return two(min(values)), two(max(values))


def p_fall(metric: str, model: str, **where: str) -> str:
    return p(regime(metric, model, **where)["p_fall"])


def ladder_p_fall(suite: str, model: str) -> str:
    group = next(g for g in report(f"ladder/{suite}.json")["models"] if g["model"] == model)
    return f"{group['peak_test']['p_fall']:.3f}"


def first_full(name: str, column: str, model: str, where: Row) -> str:
    """The smallest F from which the mean rounds to 1.00 at every larger F."""
    rows = [r for r in table(name) if r["model"] == model and all(r[k] == v for k, v in where.items())]
    freqs = sorted({int(float(r["freq"])) for r in rows})
    full = [f for f in freqs if all(two(mean(name, column, g, model, where)) == "1.00" for g in freqs if g >= f)]
    return str(min(full))


def grid(name: str, where: Row | None = None) -> str:
    rows = [r for r in table(name) if all(r[k] == v for k, v in (where or {}).items())]
    return ", ".join(str(f) for f in sorted({int(float(r["freq"])) for r in rows}))


def shared_grid(*settings: Row) -> str:
    grids = {grid(S, where) for where in settings}
    assert len(grids) == 1, f"the page gives one F grid for {settings}, the runs have {grids}"
    return grids.pop()


def fall_with_background_fixed(metric: str) -> tuple[str, ...]:
    """`xs` and `tiny` at F = 32, then at F = 512, then the p of each fall: `block`, lr 1e-2, background fixed."""
    at = [share(S, metric, f, m, BLOCK_LR_FIXED_BACKGROUND) for f in (32, 512) for m in ("xs", "tiny")]
    return (*at, *(p_fall(metric, m, budget="fixed_background", lr="0.01") for m in ("xs", "tiny")))


def count_seeds(name: str, where: Row) -> str:
    return str(len({r["seed"] for r in table(name) if all(r[k] == v for k, v in where.items())}))


def setting_extreme(column: str, where: Row, pick: Callable[..., float]) -> str:
    return two(pick(float(r[column]) for r in table("screen/runs.csv") if all(r[k] == v for k, v in where.items())))


def regime_cells() -> tuple[str, str, str]:
    rows = report("screen/regimes.json")
    settings, metrics = {r["setting"] for r in rows}, {r["metric"] for r in rows}
    collapse = [r for r in rows if r["collapse"]]
    assert sum("packing=block" not in r["setting"] for r in collapse) == 1, "the page says: all but one under block"
    confirmed = [(r["setting"], r["metric"]) for r in rows if r["confirmed"]]
    assert confirmed == [(REGIME_BLOCK_LR, EXT)], f"the page says: only extraction under block at lr 1e-2; {confirmed}"
    return str(len(settings)), str(len(metrics)), str(len(collapse))


def power_falls() -> tuple[str, str]:
    header = re.search(
        r"\| fall of (\d\.\d+) found \| fall of (\d\.\d+) found \|", (ROOT / "docs/fit_law.md").read_text()
    )
    assert header, "docs/fit_law.md's power table has lost its header"
    return header.group(1), header.group(2)


def knowledge_load() -> tuple[str, str, str]:
    load = {"num_facts": "5000"}
    top = max(int(float(r["freq"])) for r in table("screen/runs.csv") if r["num_facts"] == "5000")
    return f"{int(load['num_facts']):,}", str(top), share("screen/runs.csv", "memorization/acc_token", top, "xs", load)


REGIME_BLOCK_LR = "infusion.budget=fixed_total infusion.packing=block infusion.window=[0.0, 1.0] optim.lr=0.01"
S, L, Q = "screen/runs.csv", "ladder/runs.csv", "screen/in_sequence.csv"
MEM, EXT, MARGIN = "memorization/acc_token", "extraction/acc_token", "memorization/margin"
IN_SEQ, IN_SEQ_MARGIN = "memorization_in_sequence/acc_token", "memorization_in_sequence/margin"
SHAPE_EXT, SHAPE_MEM = "screen/shape_only/extraction.json", "screen/shape_only/memorization.json"
TWO_M_BLOCK = setting(tokens=TWO_M)

# (a phrase of the page, with {} where its numbers stand; what they are, from the committed files)
CHECKS: list[tuple[str, Callable[[], tuple[str, ...]]]] = [
    ("with models of {} to {} non-embedding parameters", lambda: (sizes()["xxs"], sizes()["small"])),
    ("`xs` {}, `tiny` {}, `small` {}", lambda: (sizes()["xs"], sizes()["tiny"], sizes()["small"])),
    ("under `block` also `xxs` {} and `small`", lambda: (sizes()["xxs"],)),
    (
        "far from learned (background accuracy {} to {} at F = 0)",
        lambda: (
            two(min(mean(L, "background/acc_token", 0, m) for m in ("xs", "tiny", "small"))),
            two(max(mean(L, "background/acc_token", 0, m) for m in ("xs", "tiny", "small"))),
        ),
    ),
    ("| {} facts, one statement template", lambda: (table(L)[0]["num_facts"],)),
    ("| {} facts ({} for the load)", lambda: (table(S)[0]["num_facts"], knowledge_load()[0])),
    ("| F | {} | {} under `block` and `shuffled_block`", lambda: (grid(L), shared_grid(BLOCK, SHUFFLED))),
    ("| seeds, runs | {} seeds, {} runs", lambda: (count_seeds(L, {}), str(len(table(L))))),
    (
        "| {} seeds under `block` ({} with the background fixed at the default learning rate), {} elsewhere; "
        "{} runs (`screen/runs.csv`), {} re-scored in sequence",
        lambda: (
            count_seeds(S, BLOCK),
            count_seeds(S, BLOCK_FIXED_BACKGROUND),
            count_seeds(S, SHUFFLED),
            str(len(table(S))),
            str(len(table(Q))),
        ),
    ),
    ("chance {}", lambda: (two(CHANCE),)),
    ("{} resamples, p < {} for the rise", lambda: (str(report("screen/extraction.json")["bootstrap"]), str(ALPHA))),
    (
        "with 120 facts and 3 seeds it finds a fall of {} after a peak {} of the time and a fall of {} {}, "
        "with 2 seeds {} and {}; it calls a plateau an optimum {} and {} of the time",
        lambda: (
            power_falls()[0],
            power(3)[1],
            power_falls()[1],
            power(3)[2],
            power(2)[1],
            power(2)[2],
            power(3)[0],
            power(2)[0],
        ),
    ),
    ('So a "no" below does not rule out a fall of {}.', lambda: power_falls()[:1]),
    # 1. the paper's setting
    (
        "memorization reaches {} for all three sizes",
        lambda: (two(min(mean(L, MEM, 512, m) for m in ("xs", "tiny", "small"))),),
    ),
    (
        "(`small` {} to {}); fit_law finds no fall for any size (p = {}",
        lambda: (
            share(L, MARGIN, 128, "small"),
            share(L, MARGIN, 512, "small"),
            f"{min(g['peak_test']['p_fall'] for g in report('ladder/memorization.json')['models']):.3f}",
        ),
    ),
    (
        "within noise (p = {}, {} and {} for `xs`, `tiny` and `small`",
        lambda: tuple(ladder_p_fall("extraction", m) for m in ("xs", "tiny", "small")),
    ),
    ("a fall that small is found less than {} of the time", lambda: power(3)[1:2]),
    # 2. block
    (
        "`tiny`'s extraction peaks at {} at F = {} (seeds {} to {}) and falls to {} at F = 512 (seeds {} to {}), "
        "a rise and a fall by the shape test (p {} each)",
        lambda: (
            two(peak(S, EXT, "tiny", BLOCK)[1]),
            str(peak(S, EXT, "tiny", BLOCK)[0]),
            *seed_range(S, EXT, 32, "tiny", BLOCK),
            share(S, EXT, 512, "tiny", BLOCK),
            *seed_range(S, EXT, 512, "tiny", BLOCK),
            p(max(regime(EXT, "tiny")["p_rise"], regime(EXT, "tiny")["p_fall"])),
        ),
    ),
    (
        "`xs`'s falls from {} to {} (fall p {}, the shape test only)",
        lambda: (
            share(S, EXT, 32, "xs", BLOCK),
            share(S, EXT, 512, "xs", BLOCK),
            p_fall(EXT, "xs"),
        ),
    ),
    (
        "Memorization falls for `tiny`, {} to {} (p {}), and not beyond noise for `xs`, {} to {} (p {})",
        lambda: (
            share(S, MEM, 32, "tiny", BLOCK),
            share(S, MEM, 512, "tiny", BLOCK),
            p_fall(MEM, "tiny"),
            two(peak(S, MEM, "xs", BLOCK)[1]),
            share(S, MEM, 512, "xs", BLOCK),
            p_fall(MEM, "xs"),
        ),
    ),
    # 3. a fixed background
    (
        "(`fixed_background`, {} seeds, background accuracy {} or more in every run)",
        lambda: (
            count_seeds(S, BLOCK_FIXED_BACKGROUND),
            setting_extreme("background/acc_token", BLOCK_FIXED_BACKGROUND, min),
        ),
    ),
    (
        "`tiny`'s extraction still falls, {} to {} (p {}), and its memorization {} to {} (p {}, the shape test only)",
        lambda: (
            share(S, EXT, 32, "tiny", BLOCK_FIXED_BACKGROUND),
            share(S, EXT, 512, "tiny", BLOCK_FIXED_BACKGROUND),
            p_fall(EXT, "tiny", budget="fixed_background"),
            share(S, MEM, 32, "tiny", BLOCK_FIXED_BACKGROUND),
            share(S, MEM, 512, "tiny", BLOCK_FIXED_BACKGROUND),
            p_fall(MEM, "tiny", budget="fixed_background"),
        ),
    ),
    (
        "(extraction p {}, memorization p {})",
        lambda: (
            p_fall(EXT, "xs", budget="fixed_background"),
            p_fall(MEM, "xs", budget="fixed_background"),
        ),
    ),
    # 4. learning rate 1e-2
    (
        "Extraction peaks at F = {} (`xs` {}, `tiny` {}) and falls to {} and {} at F = 512",
        lambda: (
            str(max(peak(S, EXT, m, BLOCK_LR)[0] for m in ("xs", "tiny"))),
            share(S, EXT, 32, "xs", BLOCK_LR),
            share(S, EXT, 32, "tiny", BLOCK_LR),
            share(S, EXT, 512, "xs", BLOCK_LR),
            share(S, EXT, 512, "tiny", BLOCK_LR),
        ),
    ),
    (
        "F* = {} [{}, {}] and {} [{}, {}] (`screen/extraction.txt`)",
        lambda: (
            *f_star("screen/extraction.json", "xs", lr="0.01"),
            *f_star("screen/extraction.json", "tiny", lr="0.01"),
        ),
    ),
    (
        "({} to {} and {} to {}, p {} each)",
        lambda: (
            share(S, MEM, 32, "xs", BLOCK_LR),
            share(S, MEM, 512, "xs", BLOCK_LR),
            share(S, MEM, 32, "tiny", BLOCK_LR),
            share(S, MEM, 512, "tiny", BLOCK_LR),
            p(max(regime(MEM, m, lr="0.01")["p_fall"] for m in ("xs", "tiny"))),
        ),
    ),
    (
        "With the background fixed ({} seeds, background accuracy {} or more, held-out loss at most {})",
        lambda: (
            count_seeds(S, BLOCK_LR_FIXED_BACKGROUND),
            setting_extreme("background/acc_token", BLOCK_LR_FIXED_BACKGROUND, min),
            setting_extreme("heldout/loss", BLOCK_LR_FIXED_BACKGROUND, max),
        ),
    ),
    (
        "memorization from {} and {} at F = 32 to {} and {} at F = 512 (p {} and p {})",
        lambda: fall_with_background_fixed(MEM),
    ),
    ("extraction from {} and {} to {} and {} (p {} and p {})", lambda: fall_with_background_fixed(EXT)),
    # 5. alone and in sequence
    (
        "answer {} of the facts alone at F = 512 answer {} of them after their list neighbours",
        lambda: (
            share(Q, MEM, 512, "tiny", BLOCK),
            two(min(seeds(Q, IN_SEQ, 512, "tiny", BLOCK))),
        ),
    ),
    (
        "with a margin of {} there against {} alone",
        lambda: (
            share(Q, IN_SEQ_MARGIN, 512, "tiny", BLOCK),
            share(Q, MARGIN, 512, "tiny", BLOCK),
        ),
    ),
    (
        "memorization reaches {} (`tiny` from F = {}, `xs` from F = {}) and does not fall (p {} for both)",
        lambda: (
            share(S, MEM, 512, "tiny", SHUFFLED),
            first_full(S, MEM, "tiny", SHUFFLED),
            first_full(S, MEM, "xs", SHUFFLED),
            p(min(regime(MEM, m, packing="shuffled_block")["p_fall"] for m in ("xs", "tiny"))),
        ),
    ),
    ("`block`, 1M tokens, {} seeds (dots)", lambda: (count_seeds(S, BLOCK),)),
    (
        "Under `block` recall in sequence stays at {} while recall alone falls",
        lambda: (two(min(seeds(Q, IN_SEQ, f, m, BLOCK)[0] for f in (128, 512) for m in ("xs", "tiny"))),),
    ),
    # 6. four sizes
    (
        "is highest at F = {} for `xxs` ({}, still rising), {} for `xs` ({}), {} for `tiny` ({}) "
        "and {} for `small` ({})",
        lambda: tuple(
            part
            for m in ("xxs", "xs", "tiny", "small")
            for part in (str(peak(S, MEM, m, BLOCK)[0]), two(peak(S, MEM, m, BLOCK)[1]))
        ),
    ),
    (
        "F* = {} [{}, {}] and {} [{}, {}], and on memorization for no size",
        lambda: (
            *f_star("screen/extraction.json", "tiny"),
            *f_star("screen/extraction.json", "small"),
        ),
    ),
    (
        "`tiny` and `small` (p {} each)",
        lambda: (p(max(fitted("screen/memorization.json", m)["peak_test"]["p_fall"] for m in ("tiny", "small"))),),
    ),
    # 7. the law
    (
        "through {} extraction optima alpha sits at its bound ({}) and E = {} [{}, {}]",
        lambda: (
            str(law("screen/extraction.json")["n_points"]),
            two(law("screen/extraction.json")["alpha"]),
            whole(law("screen/extraction.json")["E"]),
            *map(whole, law("screen/extraction.json")["E_ci"]),
        ),
    ),
    (
        "extraction has {} in-range optima, alpha = {} [{}, {}], and fitted on the {} smaller groups",
        lambda: (
            str(law(SHAPE_EXT)["n_points"]),
            two(law(SHAPE_EXT)["alpha"]),
            *map(two, law(SHAPE_EXT)["alpha_ci"]),
            str(law(SHAPE_EXT)["validation"]["leave_largest_out"]["n_train"]),
        ),
    ),
    (
        "predicts `small`'s F* as {} [{}, {}] against {} measured ({}, inside the interval)",
        lambda: (
            whole(holdout(SHAPE_EXT)["predicted"]),
            *map(whole, holdout(SHAPE_EXT)["interval"]),
            whole(holdout(SHAPE_EXT)["f_star"]),
            pct(holdout(SHAPE_EXT)["predicted"] / holdout(SHAPE_EXT)["f_star"] - 1),
        ),
    ),
    (
        "memorization's predicts {} [{}, {}] against {} ({})",
        lambda: (
            whole(holdout(SHAPE_MEM)["predicted"]),
            *map(whole, holdout(SHAPE_MEM)["interval"]),
            whole(holdout(SHAPE_MEM)["f_star"]),
            pct(holdout(SHAPE_MEM)["predicted"] / holdout(SHAPE_MEM)["f_star"] - 1),
        ),
    ),
    (
        "{} on extraction and {} on memorization, because F* barely moves",
        lambda: (
            pct(constant(SHAPE_EXT) / holdout(SHAPE_EXT)["f_star"] - 1),
            pct(constant(SHAPE_MEM) / holdout(SHAPE_MEM)["f_star"] - 1),
        ),
    ),
    ("F* = b/c lies {} to {} times above the model-free peak", lambda: tuple(f"{r:.1f}" for r in peak_ratios())),
    # 8. the screen and the load
    ("of {} settings x {} metrics on `xs` and `tiny`, the rule holds in {} cells", regime_cells),
    ("(`tiny`'s fall p {})", lambda: (p_fall(EXT, "tiny", packing="scattered", budget="fixed_background", lr="0.01"),)),
    (
        "A knowledge load of {} facts (2M background tokens held fixed) could be pushed only to F = {}, "
        "where `xs` knows {}",
        knowledge_load,
    ),
    # the claims
    (
        "the memorization peak moves to smaller F from `xxs` to `tiny` ({}, {}, {}), then later again for `small` ({})",
        lambda: tuple(str(peak(S, MEM, m, BLOCK)[0]) for m in ("xxs", "xs", "tiny", "small")),
    ),
    (
        "moves from F = {} at 1M tokens to F = {} at 2M ({}); `xs`'s does not (F = {} at 2M, {})",
        lambda: (
            str(peak(S, MEM, "tiny", BLOCK)[0]),
            str(peak(S, MEM, "tiny", TWO_M_BLOCK)[0]),
            two(peak(S, MEM, "tiny", TWO_M_BLOCK)[1]),
            str(peak(S, MEM, "xs", TWO_M_BLOCK)[0]),
            two(peak(S, MEM, "xs", TWO_M_BLOCK)[1]),
        ),
    ),
    (
        "it predicts the held-out size within {} on extraction and {} on memorization, a constant within {} and {}",
        lambda: (
            pct(holdout(SHAPE_EXT)["predicted"] / holdout(SHAPE_EXT)["f_star"] - 1),
            pct(holdout(SHAPE_MEM)["predicted"] / holdout(SHAPE_MEM)["f_star"] - 1),
            pct(constant(SHAPE_EXT) / holdout(SHAPE_EXT)["f_star"] - 1),
            pct(constant(SHAPE_MEM) / holdout(SHAPE_MEM)["f_star"] - 1),
        ),
    ),
    # multiple choice against generative recall: the collapse ladder
    (
        "`tiny` answers {} of the facts exactly at F = 32, {} at 128 and {} at 512, where multiple choice reads {},"
        " {} and {}; `xs` {}, {} and {} against {}, {} and {}; `xxs` {}, {} and {} against {}, {} and {}",
        lambda: tuple(
            two(mean(C, column, freq, model))
            for model in ("tiny", "xs", "xxs")
            for column in (RECALL, MC)
            for freq in (32, 128, 512)
        ),
    ),
    (
        "`tiny` p {} for both, `xs` p {} for recall and p {} for multiple choice, `xxs` p {} for recall and p {} for"
        " multiple choice (a fall of {} from its top, below the {} that {} seeds find {} of the time)",
        lambda: (
            both_tiny()
            + (
                p(ladder_fall(RECALL, "xs")),
                p(ladder_fall(MC, "xs")),
                p(ladder_fall(RECALL, "xxs")),
                p(ladder_fall(MC, "xxs")),
                two(fall_from_top(MC, "xxs")),
                power_falls()[0],
                count_seeds(C, {}),
                power(int(count_seeds(C, {})))[1],
            )
        ),
    ),
    (
        "AICc prefers a saturating curve for recall at every size{}",
        lambda: ("" if all(v["preferred"] == "saturating" for v in ladder_verdicts(RECALL)) else " (not so)",),
    ),
    (
        "at F = 0 it is {} (`tiny`), {} (`xs`) and {} (`xxs`)",
        lambda: tuple(two(mean(C, RECALL, 0, model)) for model in ("tiny", "xs", "xxs")),
    ),
    (
        "Background recall stays at {} or more up to F = 128 and falls only at 512 (`tiny` {}), where the injected"
        " facts take {} of the budget",
        lambda: (
            f"{min(mean(C, BACKGROUND_RECALL, f, m) for m in ('tiny', 'xs', 'xxs') for f in (0, 2, 8, 32, 128)):.2f}",
            two(mean(C, BACKGROUND_RECALL, 512, "tiny")),
            f"{mean(C, 'injected_share', 512, 'tiny'):.0%}",
        ),
    ),
    ("`memorization/acc_token` (chance {})", lambda: (two(CHANCE),)),
    ("`block` at learning rate 1e-2, {} seeds; `xxs`, `xs` and `tiny` so far", lambda: (count_seeds(C, {}),)),
    ("Mean over {} seeds; `memorization/acc_token`", lambda: (count_seeds(C, {}),)),
    # what it cannot see
    ("At most {} parameters, 2M tokens and 120 facts", lambda: (sizes()["small"],)),
    ("with 2 seeds a fall of {} is found {} of the time", lambda: (power_falls()[0], power(2)[1])),
]

# The front page's summary: phrases of README.md, checked as the page's are
SUMMARY: list[tuple[str, Callable[[], tuple[str, ...]]]] = [
    (
        "models of {} to {} non-embedding parameters, F up to {}, {} seeds",
        lambda: (sizes()["xxs"], sizes()["small"], grid(L).split(", ")[-1], count_seeds(L, {})),
    ),
    (
        "F*(C) predicts a held-out size's F* within {} (extraction), but F* barely moves with C: "
        "a constant does within {}",
        lambda: (
            pct(holdout(SHAPE_EXT)["predicted"] / holdout(SHAPE_EXT)["f_star"] - 1),
            pct(constant(SHAPE_EXT) / holdout(SHAPE_EXT)["f_star"] - 1),
        ),
    ),
]

# Numbers the page may hold outside the checked phrases: F values, budgets and the learning rate as settings; a year
STRUCTURAL = {"0", "2", "8", "16", "32", "64", "128", "256", "512", "0.5M", "1M", "2M", "1e-2", "2025"}
NUMBER = re.compile(r"(?<![\w.#^/])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?[kM]?%?(?![\w])")
IGNORED = (
    re.compile(r"`[^`]*`"),  # code, commands, keys, file names
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"\b(?:Figure|findings?) \d+(?: (?:to|and) \d+)?"),  # references to figures and findings
)


def prose(text: str) -> str:
    """The page without code blocks, headings, images and list numbers, on one line with single spaces."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not (fenced or line.startswith("#") or line.startswith("![")):
            kept.append(re.sub(r"^\s*\d+\.\s", " ", line))
    return " ".join(" ".join(kept).split())


@cache
def expected() -> tuple[str, ...]:
    return tuple(" ".join(phrase.split()).format(*numbers()) for phrase, numbers in CHECKS)


@cache
def page() -> str:
    return prose(PAGE.read_text())


def stray_numbers(text: str) -> list[str]:
    """Numbers of the page outside every checked phrase and outside code, links, references and STRUCTURAL."""
    rest = prose(text)
    for phrase in expected():
        rest = rest.replace(phrase, " ")
    for pattern in IGNORED:
        rest = pattern.sub(" ", rest)
    return [n for n in NUMBER.findall(rest) if n not in STRUCTURAL]


@pytest.mark.parametrize("index", range(len(CHECKS)), ids=lambda i: CHECKS[i][0][:50])
def test_each_number_of_the_page_is_computed_from_the_committed_files(index: int) -> None:
    phrase = expected()[index]
    assert phrase in page(), f"docs/results/README.md should say: {phrase!r}"


def test_the_page_holds_no_number_the_test_does_not_compute() -> None:
    assert not stray_numbers(PAGE.read_text()), (
        f"numbers on docs/results/README.md that no check computes: {stray_numbers(PAGE.read_text())}"
    )


def test_the_page_is_short() -> None:
    assert len(PAGE.read_text().splitlines()) <= 250


def test_every_fact_is_recalled_in_sequence_from_f_128_under_block() -> None:
    """Finding 5's claim: every seed of both sizes, at both learning rates and with the background fixed."""
    for where in (BLOCK, BLOCK_FIXED_BACKGROUND, BLOCK_LR):
        for model in ("xs", "tiny"):
            for freq in (128, 512):
                assert min(seeds(Q, IN_SEQ, freq, model, where)) == 1.0, (where, model, freq)


def test_a_changed_number_is_caught() -> None:
    """The checks bite: any number of a checked phrase, changed, leaves the phrase unmatched and the number stray."""
    text = PAGE.read_text()
    phrase = expected()[
        CHECKS.index(next(c for c in CHECKS if c[0].startswith("F* = {} [{}, {}] and {} [{}, {}] (`screen")))
    ]
    assert phrase in prose(text)
    changed = text.replace(phrase.split(" [")[0], "F* = 121", 1)
    assert phrase not in prose(changed) and "121" in stray_numbers(changed)


@pytest.mark.parametrize("index", range(len(SUMMARY)), ids=lambda i: SUMMARY[i][0][:50])
def test_the_front_page_summary_agrees_with_the_committed_files(index: int) -> None:
    phrase, numbers = SUMMARY[index]
    assert " ".join(phrase.split()).format(*numbers()) in prose((ROOT / "README.md").read_text())


def test_the_verdicts_in_words() -> None:
    """What the page says in words about fit_law's verdicts: both tests (interior), or the shape test only."""

    def shape_only(verdict: Any) -> bool:
        return not verdict["interior"] and max(verdict["p_rise"], verdict["p_fall"]) < ALPHA

    assert regime(EXT, "tiny")["interior"] and shape_only(regime(EXT, "xs"))  # finding 2
    assert shape_only(regime(MEM, "tiny", budget="fixed_background"))  # finding 3
    assert all(regime(EXT, m, lr="0.01")["interior"] for m in ("xs", "tiny"))  # finding 4
    assert all(shape_only(regime(MEM, m, lr="0.01")) for m in ("xs", "tiny"))
    assert all(
        shape_only(regime(c, m, budget="fixed_background", lr="0.01")) for c in (MEM, EXT) for m in ("xs", "tiny")
    )
    assert [m for m in ("xxs", "xs", "tiny", "small") if fitted("screen/memorization.json", m)["status"] == "ok"] == []
    assert [m for m in ("xxs", "xs", "tiny", "small") if fitted("screen/extraction.json", m)["status"] == "ok"] == [
        "tiny",
        "small",
    ]  # finding 6
    assert law("screen/extraction.json")["alpha"] == ALPHA_MAX  # finding 7: at its bound
    assert holdout(SHAPE_EXT)["covered"]
