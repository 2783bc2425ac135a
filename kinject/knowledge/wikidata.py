"""Wikidata triples from local files, as the same `KnowledgeSet` the synthetic world gives.

One triple per JSON line or CSV/TSV row, with labels: `subject, relation, object` (ids may sit
beside them and are ignored), or LAMA's T-REx layout `sub_label, predicate_id, obj_label`.
Relations are keyed by property id (P19, ...) and their templates come from config. Distractors
are drawn from every object the files give a relation, and never from another true object of the
subject, so multi-valued properties are asked fairly.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kinject.errors import ConfigError
from kinject.files import expand
from kinject.knowledge.facts import Fact, KnowledgeSet, parse_relations

LAYOUTS = (("subject", "relation", "object"), ("sub_label", "predicate_id", "obj_label"))
EXPECTED = "a triple with labels: subject, relation, object (or LAMA's sub_label, predicate_id, obj_label)"


@dataclass(frozen=True, order=True)
class Triple:
    subject: str
    relation: str
    object: str


def _records(path: str) -> Iterator[tuple[str, Any]]:
    """(file:line, record) for every non-blank line or row of a JSON-lines, CSV or TSV file."""
    suffix = os.path.splitext(path)[1].lower()
    with io.StringIO(_text(path), newline="") as file:
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(file, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                yield f"{path}:{reader.line_num}", row
        elif suffix in (".jsonl", ".json"):
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    raise ConfigError(f"{path}:{number}", EXPECTED, line.strip()[:80]) from None
                yield f"{path}:{number}", record
        else:
            raise ConfigError("knowledge.files", "files ending in .jsonl, .json, .csv or .tsv", path)


def _text(path: str) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped); other encodings are named with their line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}",
            "UTF-8 text",
            data[error.start : error.start + 8],
            hint="convert the file, e.g. iconv -f latin1 -t utf-8",
        ) from None


def _triple(where: str, record: Any) -> Triple:
    if isinstance(record, dict):
        for layout in LAYOUTS:
            values: list[Any] = [record.get(key) for key in layout]
            if all(isinstance(v, str) and v.strip() for v in values):
                return Triple(*(v.strip() for v in values))
    raise ConfigError(where, EXPECTED, record)


def read_triples(paths: Sequence[str]) -> list[Triple]:
    """Distinct triples of all files, sorted, so the sample depends on the seed and not on file order.
    A file without a triple (empty, blank, or a CSV header alone) is refused with its name."""
    triples: set[Triple] = set()
    for path in paths:
        read = {_triple(where, record) for where, record in _records(path)}
        if not read:
            got = (
                "only a header row"
                if _text(path).strip() and path.lower().endswith((".csv", ".tsv"))
                else "an empty file"
            )
            raise ConfigError(path, EXPECTED.replace("a triple", "at least one triple", 1), got)
        triples |= read
    return sorted(triples)


def sample(triples: Sequence[Triple], num_facts: int, seed: int) -> list[Fact]:
    """K triples drawn by seed, taken from each relation in turn (balanced while a relation has any)."""
    by_relation: dict[str, list[Triple]] = defaultdict(list)
    for triple in triples:
        by_relation[triple.relation].append(triple)
    rng = np.random.default_rng([seed, 5])
    pools = [[by_relation[r][i] for i in rng.permutation(len(by_relation[r]))] for r in sorted(by_relation)]
    picked = [t for t in itertools.chain.from_iterable(itertools.zip_longest(*pools)) if t is not None][:num_facts]
    if len(picked) < num_facts:
        raise ConfigError(
            "knowledge.num_facts", f"at most the {len(picked)} distinct triples of the included relations", num_facts
        )
    return [Fact(i, t.subject, t.relation, t.object) for i, t in enumerate(picked)]


def load(
    files: str | Sequence[str], relations: Mapping[str, Any], include: Sequence[str] | None, num_facts: int, seed: int
) -> KnowledgeSet:
    """The knowledge set of `knowledge=wikidata`: K sampled facts, their relations and distractor pools."""
    templates = parse_relations(relations, "knowledge.relations")
    triples = read_triples(expand(files, "knowledge.files"))
    present = {t.relation for t in triples}
    chosen = sorted(include) if include is not None else sorted(present)
    missing = [r for r in chosen if r not in templates]
    if missing:
        raise ConfigError(
            "knowledge.relations",
            "templates for every relation of the triples",
            missing,
            hint="add them under knowledge.relations, or pick relations with knowledge.include",
        )
    absent = [r for r in chosen if r not in present]
    if absent or not chosen:
        raise ConfigError(
            "knowledge.include", f"relations that the triple files hold, among {sorted(present)}", absent or chosen
        )
    triples = [t for t in triples if t.relation in chosen]
    truth: dict[tuple[str, str], set[str]] = defaultdict(set)
    candidates: dict[str, set[str]] = defaultdict(set)
    for t in triples:
        truth[(t.subject, t.relation)].add(t.object)
        candidates[t.relation].add(t.object)
    return KnowledgeSet(
        sample(triples, num_facts, seed),
        {r: templates[r] for r in chosen},
        {r: sorted(objects) for r, objects in candidates.items()},
        dict(truth),
    )
