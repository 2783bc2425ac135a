"""kinject's suites as lm-evaluation-harness tasks, scored by lm-eval itself, offline, on a tiny exported model."""

from __future__ import annotations

import json

import pytest
import torch

from kinject.cli.evaluate import LM_EVAL, evaluate, export
from kinject.evaluation.lm_eval_tasks import PREFIX
from tests.conftest import write_checkpoint


@pytest.fixture
def exported(make_cfg, tmp_path):
    """An export of untrained random weights (their choices vary item by item) with the smoke run's suites, facts
    packed in blocks (questions after context documents)."""
    cfg = make_cfg("eval.suites=[memorization,memorization_in_sequence,background]", "infusion.packing=block")
    torch.manual_seed(0)
    checkpoint = write_checkpoint(cfg, tmp_path / "last.ckpt")
    return export(checkpoint, tmp_path / "hf")


def test_each_suite_is_a_task_whose_text_is_kinjects(exported):
    tasks = exported / LM_EVAL
    assert sorted(p.name for p in tasks.glob("*.yaml")) == [
        "background.yaml",
        "kinject.yaml",
        "memorization.yaml",
        "memorization_in_sequence.yaml",
    ]
    docs = [json.loads(line) for line in (tasks / "memorization_in_sequence.jsonl").read_text().splitlines()]
    assert all(doc["context"].startswith("<|endoftext|>") for doc in docs)
    assert max(doc["context"].count("<|endoftext|>") for doc in docs) > 1, "context documents, each EOS-led"
    assert all(c.startswith(" ") and not c.startswith("  ") for doc in docs for c in doc["choices"])


@pytest.mark.slow
def test_lm_eval_acc_is_acc_sum_and_acc_norm_is_acc_char_item_by_item(exported, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)  # both read at import
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    ours = evaluate(exported, device="cpu").items
    out = simple_evaluate(
        model="hf",
        model_args={"pretrained": str(exported), "dtype": "float32", "max_length": 4096},
        tasks=["kinject"],
        task_manager=TaskManager(include_path=str(exported / LM_EVAL)),
        device="cpu",
        batch_size=16,
        log_samples=True,
    )
    assert out is not None
    for suite, record in ours.items():
        samples = sorted(out["samples"][f"{PREFIX}{suite}"], key=lambda sample: sample["doc_id"])
        assert len(samples) == len(record["gold"]) > 0
        assert [s["acc"] for s in samples] == pytest.approx(record["correct_sum"]), suite
        assert [s["acc_norm"] for s in samples] == pytest.approx(record["correct_char"]), suite
        assert 0 < sum(record["correct_sum"]) < len(samples), "the choices vary item by item"
