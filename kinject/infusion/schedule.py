"""Where each injected fact goes: a pure function of (seed, F, facts, sequences, window, packing).

Each fact appears exactly F times. The run's sequences inside `infusion.window` (fractions of the
run, [0, 1] by default) are cut into F equal slices, and a fact's k-th exposure falls in the k-th,
so its last exposure falls in the last 1/F of the window. Two packings (`infusion.packing`):
- `scattered`: within a slice the facts are laid out in a seeded order at even spacing, so
  injected text never bunches up;
- `block`: the k-th exposure of every fact forms one fact-dense block, the facts in one seeded
  order fixed for the run, packed whole into consecutive sequences at a seeded place in the slice,
  the way domain data often arrives as a list of facts;
- `shuffled_block`: the same blocks, each round in its own seeded order, so no fact has the same
  neighbours twice (a fixed list lets a model recall a fact from the one before it).
Either way a resumed or re-sharded run computes the very same placement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kinject.errors import ConfigError

BLOCK_PACKINGS = ("block", "shuffled_block")  # each round written as one block of whole facts
PACKINGS = ("scattered", *BLOCK_PACKINGS)


@dataclass(frozen=True)
class Schedule:
    """Exposures sorted by the sequence they go into, in their order there: (sequence, fact, exposure number)."""

    sequence: np.ndarray
    fact: np.ndarray
    exposure: np.ndarray

    def at(self, index: int) -> slice:
        """The exposures spliced into one training sequence."""
        lo, hi = np.searchsorted(self.sequence, [index, index + 1])
        return slice(int(lo), int(hi))

    def before_last(self, num_facts: int) -> list[list[tuple[int, int]]]:
        """Per fact, the exposures (fact, exposure number) spliced before its last exposure in that
        exposure's sequence, in stream order: the context the fact was last trained in."""
        context: list[list[tuple[int, int]]] = [[] for _ in range(num_facts)]
        if not len(self.fact):
            return context
        for i in np.flatnonzero(self.exposure == self.exposure.max()).tolist():
            lo = self.at(int(self.sequence[i])).start
            context[int(self.fact[i])] = list(zip(self.fact[lo:i].tolist(), self.exposure[lo:i].tolist()))
        return context


def window_sequences(window: tuple[float, float], num_sequences: int) -> tuple[int, int]:
    """The first sequence of the window and the one after its last."""
    return int(window[0] * num_sequences), int(window[1] * num_sequences)


def check_freq(freq: int, num_sequences: int, window: tuple[float, float] = (0.0, 1.0)) -> None:
    """Refuses more exposures per fact than the window has sequences (each of the F slices needs one)."""
    lo, hi = window_sequences(window, num_sequences)
    if freq > hi - lo:
        raise ConfigError(
            "infusion.freq",
            f"at most the number of training sequences in infusion.window ({hi - lo})",
            freq,
            hint="raise tokens, widen infusion.window or lower infusion.freq",
        )


def check_block(needed: int, slice_sequences: int, num_facts: int, packing: str = "block") -> None:
    """Refuses a block longer than a slice: the k-th block must fit in the k-th of the window's F slices."""
    if needed > slice_sequences:
        raise ConfigError(
            "infusion.packing",
            f"blocks that fit the {slice_sequences} sequences of each of the F slices of the window",
            packing,
            hint=f"a block of {num_facts} facts takes {needed} "
            "sequences; lower infusion.freq or knowledge.num_facts, raise tokens or widen infusion.window",
        )


def plan(
    num_facts: int,
    freq: int,
    num_sequences: int,
    seed: int,
    window: tuple[float, float] = (0.0, 1.0),
    packing: str = "scattered",
    lengths: np.ndarray | None = None,
    seq_len: int = 0,
) -> Schedule:
    """The blocks need `lengths[k, f]`, the tokens of fact f's k-th exposure, to pack each one into `seq_len`."""
    check_freq(freq, num_sequences, window)
    rng = np.random.default_rng([seed, freq, num_facts, num_sequences])
    lo, hi = window_sequences(window, num_sequences)
    span = hi - lo
    order = rng.permutation(num_facts) if packing == "block" else np.arange(num_facts)
    sequences, facts, exposures = [], [], []
    for k in range(freq):
        start, stop = lo + (k * span) // freq, lo + ((k + 1) * span) // freq
        if packing == "shuffled_block":
            order = rng.permutation(num_facts)
        offset = rng.random()
        if packing in BLOCK_PACKINGS:
            assert lengths is not None, "block packings need the lengths of the exposures"
            rows = _rows(lengths[k][order], seq_len)
            check_block(int(rows[-1]) + 1, stop - start, num_facts, packing)
            sequences.append(start + int(offset * (stop - start - int(rows[-1]))) + rows)
            facts.append(order)
        else:
            sequences.append(start + ((order + offset) * (stop - start) / num_facts).astype(np.int64))
            facts.append(rng.permutation(num_facts))
        exposures.append(np.full(num_facts, k))
    if not sequences:
        empty = np.zeros(0, dtype=np.int64)
        return Schedule(empty, empty, empty)
    sequence, fact, exposure = (np.concatenate(x) for x in (sequences, facts, exposures))
    sort = np.argsort(sequence, kind="stable")
    return Schedule(sequence[sort], fact[sort], exposure[sort])


def _rows(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """The sequence (from 0) of each text when texts are packed whole, in order, `capacity` tokens a sequence."""
    rows = np.zeros(len(lengths), dtype=np.int64)
    row = used = 0
    for i, n in enumerate(lengths.tolist()):
        if used and used + n > capacity:
            row, used = row + 1, 0
        rows[i] = row
        used += n
    return rows
