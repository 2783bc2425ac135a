"""Where each injected fact goes: a pure function of (seed, F, number of facts, number of sequences).

Each fact appears exactly F times. Its k-th exposure falls in the k-th of F equal slices of the
run's sequences, so a fact's last exposure falls in the last 1/F of the run. Within a slice the
facts are laid out in a seeded order at even spacing, so injected text never bunches up and a
resumed or re-sharded run computes the very same placement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kinject.errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    """Exposures sorted by the sequence they go into: (sequence, fact, exposure number)."""

    sequence: np.ndarray
    fact: np.ndarray
    exposure: np.ndarray

    def at(self, index: int) -> slice:
        """The exposures spliced into one training sequence."""
        lo, hi = np.searchsorted(self.sequence, [index, index + 1])
        return slice(int(lo), int(hi))


def check_freq(freq: int, num_sequences: int) -> None:
    """Refuses more exposures per fact than the run has sequences (each of the F slices needs one)."""
    if freq > num_sequences:
        raise ConfigError("infusion.freq", f"at most the number of training sequences ({num_sequences})", freq,
                          hint="raise tokens or lower infusion.freq")


def plan(num_facts: int, freq: int, num_sequences: int, seed: int) -> Schedule:
    check_freq(freq, num_sequences)
    rng = np.random.default_rng([seed, freq, num_facts, num_sequences])
    order = np.arange(num_facts)
    sequences, facts, exposures = [], [], []
    for k in range(freq):
        start, stop = (k * num_sequences) // freq, ((k + 1) * num_sequences) // freq
        offset = rng.random()
        sequences.append(start + ((order + offset) * (stop - start) / num_facts).astype(np.int64))
        facts.append(rng.permutation(num_facts))
        exposures.append(np.full(num_facts, k))
    if not sequences:
        empty = np.zeros(0, dtype=np.int64)
        return Schedule(empty, empty, empty)
    sequence, fact, exposure = (np.concatenate(x) for x in (sequences, facts, exposures))
    sort = np.argsort(sequence, kind="stable")
    return Schedule(sequence[sort], fact[sort], exposure[sort])
