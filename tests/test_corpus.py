"""The streamed background: units, lanes, packing, and bad input, on tiny FineWeb-Edu-shaped files."""

from __future__ import annotations

import gzip
import json
import re
import socket
from pathlib import Path

import httpx2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import transformers.utils.hub
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

from kinject.cli import train as train_script
from kinject.data.background import LaneStream
from kinject.data.corpus import Corpus, UnreadableData
from kinject.errors import ConfigError
from kinject.run.experiment import prepare
from kinject.run.show_batch import show
from tests.conftest import ROOT
from tests.corpus_files import ROW_GROUPS, ROWS_PER_GROUP, damage_page, documents, local, write_jsonl, write_parquet


def lane_documents(stream: LaneStream, tokenizer, lane: int, chunks: int) -> list[str]:
    """A lane's text over its first chunks, split at EOS into documents."""
    g, j = divmod(lane, stream.batch_size)
    tokens = np.concatenate([stream.chunk((c * stream.groups + g) * stream.batch_size + j)[0] for c in range(chunks)])
    return tokenizer.decode(tokens).split(tokenizer.eos_token)[1:]


def test_units_are_row_groups_and_blocks_hold_every_line_once(tmp_path, fineweb):
    pattern, texts = fineweb
    corpus = Corpus(sorted(str(p) for p in Path(pattern).parent.glob("*.parquet")), "text", block_bytes=1)
    assert len(corpus.units) == sum(ROW_GROUPS)
    assert list(corpus.texts(corpus.units)) == texts
    first = corpus.units[1]
    assert [t for _, batch in corpus.documents(first, start=4) for t in batch] == texts[14:20]

    lines = documents(37)
    write_jsonl(tmp_path / "docs.jsonl", lines[:30])
    (tmp_path / "docs.txt").write_text("\n".join(lines[30:]) + "\n\n")
    for block in (1, 7, 150, 10**6):
        corpus = Corpus([str(tmp_path / "docs.jsonl"), str(tmp_path / "docs.txt")], "text", block_bytes=block)
        assert list(corpus.texts(corpus.units)) == lines, block
    assert [t for _, b in corpus.documents(corpus.units[0], start=2) for t in b] == lines[2:30]


def test_each_pass_deals_every_unit_to_exactly_one_lane(make_cfg, fineweb):
    experiment = prepare(local(make_cfg, fineweb[0], "data.heldout_units=0"))
    stream = experiment.datamodule.dataset.background
    units = len(stream.units)
    dealt = [stream.unit(n % stream.lanes, n // stream.lanes) for n in range(3 * units)]
    passes = [dealt[p * units : (p + 1) * units] for p in range(3)]
    assert all(sorted(p, key=str) == sorted(stream.units, key=str) for p in passes)
    assert passes[0] != passes[1]


def test_lanes_pack_their_units_documents_in_order_without_gaps(make_cfg, fineweb):
    pattern, texts = fineweb
    experiment = prepare(local(make_cfg, pattern, "data.heldout_units=0"))
    stream = experiment.datamodule.dataset.background
    by_unit = {unit: list(stream.corpus.texts([unit])) for unit in stream.units}
    for lane in (0, 5, stream.lanes - 1):
        expected = [t for k in range(30) for t in by_unit[stream.unit(lane, k)]]
        seen = lane_documents(stream, experiment.tokenizer, lane, chunks=80)
        assert len(seen) > 2 * ROWS_PER_GROUP
        assert seen[:-1] == expected[: len(seen) - 1]
        assert expected[len(seen) - 1].startswith(seen[-1])


def test_background_is_the_same_at_every_f_and_held_out_text_never_trained_on(make_cfg, fineweb):
    pattern, texts = fineweb
    streams = {}
    for freq in (0, 4):
        experiment = prepare(local(make_cfg, pattern, f"infusion.freq={freq}"))
        dataset = experiment.datamodule.dataset
        streams[freq] = [dataset[i] for i in range(0, experiment.budget.sequences, 7)]
    for x, y in zip(streams[0], streams[4]):
        used = int(y["injected"])
        assert np.array_equal(x["input_ids"][used:], y["input_ids"][used:])
    assert sum(int(y["injected"]) for y in streams[4]) > 0
    heldout = experiment.tokenizer.decode(experiment.evaluator.heldout.flatten())
    held_markers = set(re.findall(r"doc\d{4}", heldout))
    assert held_markers and held_markers <= {t[:7] for t in texts[-ROWS_PER_GROUP:]}
    trained = "".join(experiment.tokenizer.decode(dataset[i]["input_ids"]) for i in range(experiment.budget.sequences))
    assert not held_markers & set(re.findall(r"doc\d{4}", trained))


def test_jsonl_and_text_files_feed_the_same_pipeline(make_cfg, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", documents(60))
    (tmp_path / "b.txt").write_text("\n".join(documents(40, start=60)) + "\n")
    experiment = prepare(local(make_cfg, str(tmp_path / "*.*"), "data.block_bytes=2000"))
    text = experiment.tokenizer.decode(experiment.datamodule.dataset[3]["input_ids"])
    assert re.search(r"doc\d{4}", text)


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", r"data\.files: expected paths or globs that match files, got '.*nope\.parquet'. no file matches"),
        ("empty_glob", r"data\.files: .*'.*/empty/\*\.parquet'"),
        ("no_text_column", r"no_text\.parquet: expected a string column 'text'.*'content'.*data\.text_column"),
        ("suffix", r"data\.files: expected files ending in one of"),
        ("bad_jsonl", r"bad\.jsonl:2 \(line at byte 17\): expected a JSON object with a string 'text' field"),
        ("bad_line_never_trained", r"late\.jsonl:40 \(line at byte \d+\): expected a JSON object"),
        ("random_bytes_parquet", r"junk\.parquet: expected a parquet file whose footer and schema can be read"),
        ("truncated_parquet", r"cut\.parquet: expected a parquet file whose footer and schema can be read"),
        ("heldout", r"data\.heldout_units: expected 0 to 8"),
        ("int_text", r"ints\.parquet: expected a string column 'text'.*got \"column 'text' of type int64\""),
        ("list_text", r"lists\.parquet: expected a string column 'text'.*got \"column 'text' of type list<"),
        ("null_texts", r"data\.files: expected documents with text, got \['.*nulls\.parquet'\]\. every document"),
        ("empty_texts", r"data\.files: expected documents with text, got \['.*empty_texts\.jsonl'\]"),
        ("blank_lines", r"data\.files: expected documents with text, got \['.*blank\.txt'\]"),
        ("page_read_before_training", r"000_00000\.parquet, row group 1: expected data that can be read\. OSError: "),
        ("gzip", r"packed\.jsonl: expected plain UTF-8 text .*got 'gzip-compressed data'\. decompress it"),
        ("latin1", r"latin1\.jsonl:2 \(line at byte 17\): expected UTF-8 text, got b'.*\\xe9.*iconv"),
        ("folder", r"data\.files: expected paths or globs that match files, got '.*parquets'\. it is a folder"),
        ("workers", r"data\.num_workers: expected a divisor of data\.lane_groups x gradient accumulation \(2 x 2\)"),
    ],
)
def test_bad_corpus_input_is_a_clear_error(make_cfg, tmp_path, fineweb, case, match):
    (tmp_path / "empty").mkdir()
    pq.write_table(pa.table({"content": ["a document"]}), tmp_path / "no_text.parquet")
    (tmp_path / "notes.csv").write_text("text\nhello\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    (tmp_path / "late.jsonl").write_text("".join(f'{{"text": "line {i}"}}\n' for i in range(39)) + "{broken\n")
    (tmp_path / "parquets").mkdir()
    (tmp_path / "parquets" / "junk.parquet").write_bytes(bytes(range(256)) * 8)
    whole = Path(fineweb[0].replace("*.parquet", "000_00000.parquet")).read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "cut.parquet").write_bytes(whole[: len(whole) // 2])
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"text": [["a"], ["b"]]}), tmp_path / "lists.parquet")
    write_parquet(tmp_path / "nulls.parquet", [None] * 30)
    (tmp_path / "empty_texts.jsonl").write_text('{"text": ""}\n' * 30)
    (tmp_path / "blank.txt").write_text("\n \n\t\n" * 30)
    (tmp_path / "early").mkdir()
    write_parquet(tmp_path / "early" / "000_00000.parquet", documents(40))
    damage_page(tmp_path / "early" / "000_00000.parquet", 1)
    (tmp_path / "packed.jsonl").write_bytes(gzip.compress(Path(tmp_path / "late.jsonl").read_bytes()))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    files, extra = {
        "missing": (str(tmp_path / "nope.parquet"), ()),
        "empty_glob": (str(tmp_path / "empty" / "*.parquet"), ()),
        "no_text_column": (str(tmp_path / "no_text.parquet"), ()),
        "suffix": (str(tmp_path / "notes.csv"), ()),
        "bad_jsonl": (str(tmp_path / "bad.jsonl"), ("data.block_bytes=17",)),
        "bad_line_never_trained": (str(tmp_path / "late.jsonl"), ("data.block_bytes=64", "data.heldout_units=0")),
        "random_bytes_parquet": ([fineweb[0], str(tmp_path / "parquets" / "*.parquet")], ()),
        "truncated_parquet": (str(tmp_path / "cut" / "*.parquet"), ()),
        "heldout": (fineweb[0], ("data.heldout_units=9",)),
        "workers": (fineweb[0], ("data.num_workers=3",)),
        "int_text": (str(tmp_path / "ints.parquet"), ()),
        "list_text": (str(tmp_path / "lists.parquet"), ()),
        "null_texts": (str(tmp_path / "nulls.parquet"), ()),
        "empty_texts": (str(tmp_path / "empty_texts.jsonl"), ("data.block_bytes=64",)),
        "blank_lines": (str(tmp_path / "blank.txt"), ("data.block_bytes=8",)),
        "page_read_before_training": (str(tmp_path / "early" / "*.parquet"), ()),
        "gzip": (str(tmp_path / "packed.jsonl"), ()),
        "latin1": (str(tmp_path / "latin1.jsonl"), ()),
        "folder": (str(tmp_path / "parquets"), ()),
    }[case]
    cfg = local(make_cfg, files, *extra)
    with pytest.raises(ConfigError, match=match):
        prepare(cfg)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_data_page_damaged_past_the_footer_fails_training_naming_the_file_and_row_group(make_cfg, fineweb, workers):
    """Row group 0 of the third file is read first by training (not by the tokenizer, not held out)."""
    damaged = Path(fineweb[0]).parent / "002_00000.parquet"
    damage_page(damaged, 0)
    cfg = local(make_cfg, fineweb[0], f"data.num_workers={workers}")
    with pytest.raises(UnreadableData) as failed:
        train_script.train(cfg)
    message = f"{damaged}, row group 0: expected data that can be read. OSError: Couldn't deserialize thrift"
    assert str(failed.value).startswith(message) and "\n" not in str(failed.value)
    record = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert record["status"] == "failed" and record["error"] == f"UnreadableData: {failed.value}"
    if not workers:
        assert record["where"].startswith(str(ROOT / "kinject" / "data" / "corpus.py"))


@pytest.mark.slow
def test_null_texts_train_nothing_and_are_counted_in_the_record(make_cfg, tmp_path):
    texts = documents(90)
    write_parquet(tmp_path / "third.parquet", [None if i % 3 == 0 else t for i, t in enumerate(texts)])
    cfg = local(make_cfg, str(tmp_path / "third.parquet"), "infusion.freq=0", "tokens=2048")
    train_script.train(cfg)
    counted = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["filter"]
    assert 0 < counted["empty_documents"] < counted["documents"]


def test_fineweb_without_network_fails_fast_pointing_to_local_data(make_cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = r"HF_HUB_OFFLINE is set.*data=local data\.files='DIR/sample/10BT/\*\*/\*\.parquet'"
    with pytest.raises(ConfigError, match=expected):
        prepare(make_cfg("data=fineweb_edu"))
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ConfigError, match=r"huggingface\.co: Name or service not known.*data=local"):
        prepare(make_cfg("data=fineweb_edu", "data.name=sample-100BT"))


def _gated(*args, **kwargs):
    request = httpx2.Request("GET", "https://huggingface.co/meta-llama/Llama-2-7b-hf/resolve/main/tokenizer.json")
    raise GatedRepoError(
        "401 Client Error: access to this repository is restricted", response=httpx2.Response(401, request=request)
    )


def _offline(*args, **kwargs):
    raise LocalEntryNotFoundError("cannot reach the hub and the file is not in the cache")


@pytest.mark.parametrize(
    "hub, match",
    [
        (
            _gated,
            r"^data\.tokenizer\.name: .*'meta-llama/Llama-2-7b-hf'\. The hub refused it: meta-llama/Llama-2-7b-hf "
            r"is a gated repository .*hf auth login.* a local folder .*"
            r"data\.tokenizer\.name=NousResearch/Llama-2-7b-hf",
        ),
        (
            _offline,
            r"^data\.tokenizer\.name: .*The hub did not give it \(OSError: We couldn't connect.*a local folder .*"
            r"data\.tokenizer\.name=NousResearch/Llama-2-7b-hf",
        ),
    ],
)
def test_a_hub_tokenizer_the_hub_refuses_is_one_line_with_the_alternatives(make_cfg, fineweb, monkeypatch, hub, match):
    """What transformers raises when the hub answers 401 for a gated repository, or cannot be reached."""
    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", hub)
    monkeypatch.setattr(socket, "create_connection", _offline)
    cfg = local(make_cfg, fineweb[0], "data.tokenizer.kind=hub", "data.tokenizer.name=meta-llama/Llama-2-7b-hf")
    with pytest.raises(ConfigError, match=match) as refused:
        prepare(cfg)
    assert "\n" not in str(refused.value)


def test_show_batch_prints_the_decoded_sequences_of_a_step_with_facts_marked(make_cfg, fineweb):
    cfg = local(make_cfg, fineweb[0], "infusion.freq=4")
    experiment = prepare(cfg)
    dataset, batch = experiment.datamodule.dataset, experiment.budget.batch_size
    step = next(
        s
        for s in range(experiment.budget.steps)
        if any(int(dataset[i]["injected"]) for i in range(s * batch, (s + 1) * batch))
    )
    text = show(cfg, step)
    assert [int(n) for n in re.findall(r"--- sequence (\d+)", text)] == list(range(step * batch, (step + 1) * batch))
    injected = next(i for i in range(step * batch, (step + 1) * batch) if int(dataset[i]["injected"]))
    item = dataset[injected]
    marked = "⟦" + experiment.tokenizer.decode(item["input_ids"][: int(item["injected"])]) + "⟧"
    assert marked + experiment.tokenizer.decode(item["input_ids"][int(item["injected"]) :]) in text
    with pytest.raises(ConfigError, match="step: expected a step of the run"):
        show(cfg, experiment.budget.steps)
