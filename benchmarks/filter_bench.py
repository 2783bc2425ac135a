"""Speed of the lexical filter (kinject.filtering) against a naive substring loop, on one core.

    python benchmarks/filter_bench.py [--docs 20000] [--naive-docs 200]

Documents are ~4 KB of real English prose (the Python documentation topics and the license texts
shipped with the OS, resampled by paragraph; no network); entity names are person-like names plus
phrases and single words drawn from that text, so some documents really mention them.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np

from kinject.data.filtering import MentionFilter
from kinject.knowledge.facts import Fact


def paragraphs() -> list[str]:
    texts = list(topics.values())
    licenses = Path("/usr/share/common-licenses")
    if licenses.is_dir():
        texts += [p.read_text(errors="replace") for p in sorted(licenses.iterdir()) if p.is_file()]
    return [p.strip() for t in texts for p in re.split(r"\n\s*\n", t) if len(p.strip()) > 40]


def english_documents(count: int, seed: int = 0, size: int = 4000) -> list[str]:
    """Documents of about `size` characters, each a seeded draw of real paragraphs."""
    pool = paragraphs()
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(count):
        parts, length = [], 0
        while length < size * rng.uniform(0.3, 1.7):
            parts.append(pool[rng.integers(len(pool))])
            length += len(parts[-1])
        docs.append("\n\n".join(parts))
    return docs


def entity_names(count: int, seed: int = 0) -> list[str]:
    """Names like Wikidata labels: mostly people and places, a few phrases or words of the corpus."""
    rng = np.random.default_rng([seed, count])
    vocabulary = Counter(re.findall(r"[A-Za-z]{4,}", " ".join(paragraphs())))
    words = [w for w, _ in vocabulary.most_common()[1000:]]
    syllables = "ka ri mo tel van sor li an dre ber gu na os et fi lo".split()
    names: set[str] = set()
    while len(names) < count:
        kind = rng.random()
        if kind < 0.002:
            names.add(str(rng.choice(words)).title())
        elif kind < 0.05:
            names.add(" ".join(str(w).title() for w in rng.choice(words, 2)))
        else:
            names.add(" ".join("".join(rng.choice(syllables, rng.integers(2, 4))).title() for _ in range(2)))
    return sorted(names)


def naive(facts: list[Fact], mode: str):
    """The loop of `in` tests the automaton replaces (substrings, so it even skips the whole-word check)."""
    pairs = [(f.subject.lower(), f.object.lower()) for f in facts]

    def mentions(text: str) -> bool:
        lower = text.lower()
        if mode == "subject":
            return any(s in lower for s, _ in pairs)
        return any(s in lower and o in lower for s, o in pairs)

    return mentions


def rate(function, docs: list[str]) -> tuple[float, float, int]:
    """(documents/s, MB/s, documents flagged)."""
    start = time.perf_counter()
    flagged = sum(function(doc) for doc in docs)
    elapsed = time.perf_counter() - start
    return len(docs) / elapsed, sum(len(d.encode()) for d in docs) / elapsed / 1e6, flagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--naive-docs", type=int, default=200)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    docs = english_documents(args.docs)
    print(f"{len(docs)} documents, {sum(len(d.encode()) for d in docs) / 1e6:.1f} MB, one core")
    print("| names | mode | build s | docs/s | MB/s | dropped | naive docs/s | naive MB/s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    places = entity_names(2000, seed=1)
    for count in (10_000, 100_000):
        facts = [Fact(i, s, "P19", places[i % len(places)]) for i, s in enumerate(entity_names(count))]
        for mode in ("subject", "subject_and_object"):
            start = time.perf_counter()
            mentions = MentionFilter(facts, mode)
            build = time.perf_counter() - start
            per_doc, mb, flagged = rate(mentions.mentions, docs)
            naive_docs, naive_mb, _ = rate(naive(facts, mode), docs[: args.naive_docs])
            print(
                f"| {count} | {mode} | {build:.2f} | {per_doc:,.0f} | {mb:.1f} | {flagged / len(docs):.1%} | "
                f"{naive_docs:,.1f} | {naive_mb:.2f} | {mb / naive_mb:,.0f}x |"
            )


if __name__ == "__main__":
    main()
