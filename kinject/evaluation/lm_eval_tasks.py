"""kinject's multiple-choice suites as lm-evaluation-harness tasks, so that any model can be scored on a run's
facts with the tool labs already run (`evaluate.py export=DIR` writes them into DIR/lm_eval).

Each suite is a `multiple_choice` task over a JSON-lines file whose text is exactly what kinject scores: the
question led by the tokenizer's EOS (after each context document, also EOS-led), as in the training stream, and
each option with its leading space inside the choice and no target delimiter. lm-eval tokenizes context and
context + choice and scores the tokens past the context, so `acc` is kinject's `acc_sum`; its `acc_norm` divides
by the choice's length in characters, which then counts the space as kinject's `acc_char` does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from kinject.evaluation.scoring import EncodedItems
from kinject.files import write_atomic
from kinject.knowledge.facts import Item

PREFIX = "kinject_"
GROUP = "kinject"


def document(item: Item, eos: str) -> dict:
    """One item as an lm-eval document: `context` (the text before the option), `choices`, `gold`."""
    context = "".join(eos + text for text in item.context) + eos + item.prompt
    return {
        "context": context,
        "choices": [f" {option}" for option in item.options],
        "gold": int(item.gold),
        "fact_id": int(item.fact_id),
        "relation": str(item.relation),
    }


def task_yaml(name: str, data_file: Path) -> str:
    """The task's YAML; strings as JSON, which YAML reads as they are."""
    return "\n".join(
        [
            f"task: {PREFIX}{name}",
            "dataset_path: json",
            "dataset_kwargs:",
            "  data_files:",
            f"    test: {json.dumps(str(data_file.resolve()))}",
            "test_split: test",
            "output_type: multiple_choice",
            "doc_to_text: context",
            "doc_to_choice: choices",
            "doc_to_target: gold",
            'target_delimiter: ""',
            "metric_list:",
            "  - metric: acc",
            "    aggregation: mean",
            "    higher_is_better: true",
            "  - metric: acc_norm",
            "    aggregation: mean",
            "    higher_is_better: true",
            "metadata:",
            "  version: 1.0",
        ]
    )


def write_tasks(suites: Mapping[str, EncodedItems], eos: str, folder: str | Path) -> list[str]:
    """`NAME.jsonl` and `NAME.yaml` per suite, and the group `kinject` of them all, into `folder`; the task names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for name, encoded in suites.items():
        data = folder / f"{name}.jsonl"
        _write(data, [json.dumps(document(item, eos)) for item in encoded.items])
        _write(folder / f"{name}.yaml", [task_yaml(name, data)])
        names.append(f"{PREFIX}{name}")
    _write(folder / f"{GROUP}.yaml", [f"group: {GROUP}", "task:", *(f"  - {name}" for name in names)])
    return names


def _write(path: Path, lines: Sequence[str]) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text("\n".join(lines) + "\n")

    write_atomic(path, write)
