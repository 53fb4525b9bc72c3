"""Shards of a source: reading every shard of the plan, in order, gives exactly the whole read.

Compared record by record (index, data, position, raw, error, detail) with ``open_source``, and the
read reports (warnings, truncated_at_byte) too: on a cut slice of the shipped ShareGPT file, on made-up
JSON lines and JSON arrays with what real files hold (blank lines, bad lines, a cut last line, escapes,
brackets inside strings), and on parquet files of several row groups.
"""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from realchat.curation.sources import SourceConfig, open_source
from realchat.curation.sources import shards as shards_mod
from realchat.curation.sources.base import ReadReport
from realchat.curation.sources.shards import plan_shards, read_shard
from realchat.errors import SourceError

from conftest import SHAREGPT


def _key(r):
    return (r.index, r.data, r.position, r.raw, r.error, r.detail)


def _whole(cfg, tmp_path):
    it, report = open_source(cfg, tmp_path)
    return [_key(r) for r in it], report


def _sharded(cfg, tmp_path, target_bytes, max_records=None):
    specs = plan_shards(cfg, tmp_path, target_bytes, max_records)
    report = ReadReport(path="", format=cfg.format)
    out = []
    for spec in specs:
        out += [_key(r) for r in read_shard(spec, report)]
    return out, report, specs


def _assert_same(cfg, tmp_path, target_bytes, max_records=None, min_shards=1):
    whole, rep_w = _whole(cfg, tmp_path)
    got, rep_s, specs = _sharded(cfg, tmp_path, target_bytes, max_records)
    assert len(specs) >= min_shards
    assert got == whole
    assert rep_s.warnings == rep_w.warnings
    assert rep_s.truncated_at_byte == rep_w.truncated_at_byte
    return whole, specs


@pytest.fixture(scope="module")
def shipped_slice(tmp_path_factory):
    """The first 3 MB of the shipped file, as `head -c` cuts it: the last record is cut off."""
    p = tmp_path_factory.mktemp("slice") / "slice.json"
    with SHAREGPT.open("rb") as f:
        p.write_bytes(f.read(3_000_000))
    return p


@pytest.mark.parametrize("target_bytes,max_records,limit", [
    (200_000, None, None), (10**9, 50, None), (50_000, 7, 100), (10**9, None, None), (300_000, None, 5)])
def test_shipped_slice_sharded_equals_whole_read(shipped_slice, tmp_path, target_bytes, max_records, limit):
    cfg = SourceConfig(path=str(shipped_slice), limit=limit)
    whole, specs = _assert_same(cfg, tmp_path, target_bytes, max_records)
    if limit is None:
        assert whole[-1][4] == "read.truncated" and whole[-1][0] == len(whole) - 1  # the cut-off tail
        assert len(specs) > 1 or target_bytes == 10**9
    assert all(s.first_index <= (limit or 10**9) for s in specs)


def test_shipped_slice_limit_at_the_cut_record_keeps_the_warning(shipped_slice, tmp_path):
    whole, _ = _whole(SourceConfig(path=str(shipped_slice)), tmp_path)
    n_complete = len(whole) - 1
    for limit in (n_complete, n_complete - 1, n_complete + 1):
        _assert_same(SourceConfig(path=str(shipped_slice), limit=limit), tmp_path, 100_000, 40)


def _write_lines(path, lines: list[bytes]):
    path.write_bytes(b"".join(lines))
    return path


def _rec(i, text="hello"):
    return json.dumps({"id": f"c{i}", "conversations": [{"from": "human", "value": f"{text} {i}"}]}).encode()


def test_jsonl_blank_bad_and_cut_lines(tmp_path):
    lines = [b"\xef\xbb\xbf" + _rec(0) + b"\n", b"\n", b"   \t\n", _rec(1) + b"\r\n",
             "\u2003\u00a0 \n".encode(), b"{not json}\n", _rec(2) + b"\n", b"\x1c\x1d\n",
             _rec(3, "caf\xe9".encode("latin-1").decode("latin-1")) + b"\n", b"\xff\xfe{\n"]
    lines += [_rec(i) + b"\n" + (b"\n" if i % 3 == 0 else b"") for i in range(4, 60)]
    lines.append(_rec(60)[:-7])  # the last line cut, no newline
    p = _write_lines(tmp_path / "x.jsonl", lines)
    for target, cap in [(1, None), (64, None), (200, 3), (10**9, 5), (10**9, None)]:
        whole, specs = _assert_same(SourceConfig(path=str(p)), tmp_path, target, cap)
    reasons = [w[4] for w in whole if w[4]]
    assert reasons == ["read.invalid_json", "read.invalid_json", "read.truncated"]
    assert whole[-1][2] == f"line {len(lines) + sum(1 for i in range(4, 60) if i % 3 == 0)}"
    for limit in (1, 3, 30, 59, 60, 61):
        _assert_same(SourceConfig(path=str(p), limit=limit), tmp_path, 100, 4)


def test_jsonl_first_line_blank_after_a_byte_order_mark(tmp_path):
    p = _write_lines(tmp_path / "bom.jsonl", [b"\xef\xbb\xbf  \n", _rec(0) + b"\n", _rec(1) + b"\n"])
    whole, _ = _assert_same(SourceConfig(path=str(p)), tmp_path, 1)
    assert [w[0] for w in whole] == [0, 1] and whole[0][2] == "line 2"


def test_jsonl_scan_in_small_blocks(tmp_path, monkeypatch):
    """Lines that straddle the scanner's blocks (made 37 bytes here) count the same."""
    monkeypatch.setattr(shards_mod, "_BLOCK", 37)
    lines = [(_rec(i) + b"\n") if i % 4 else b" \n" for i in range(40)] + [b"\n" * 3, _rec(99)]
    p = _write_lines(tmp_path / "small.jsonl", lines)
    for target, cap in [(1, None), (90, 2), (10**9, None)]:
        _assert_same(SourceConfig(path=str(p)), tmp_path, target, cap)


TRICKY = [
    {"id": "a", "conversations": [{"from": "human", "value": 'quote \\" and brackets ] } [ { , in text'}]},
    {"id": "b", "conversations": [{"from": "gpt", "value": "backslashes \\\\\\\\ \\\\ end\\\\"}], "x": [[1, 2], {"y": []}]},
    {"id": "c", "conversations": [{"from": "human", "value": "\"}, {\"id\": \"fake\""}]},
    {"id": "d\\\"", "conversations": []},
    [1, 2, {"not": "an object"}],
    {"id": "e", "conversations": [{"from": "human", "value": "ünïcødé ✓ 𝄞 \u2028"}]},
]


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_json_array_escapes_and_brackets_in_strings(tmp_path, monkeypatch, block):
    monkeypatch.setattr(shards_mod, "_BLOCK", block)
    for indent in (None, 1):
        text = json.dumps(TRICKY * 5, indent=indent, ensure_ascii=False)
        p = tmp_path / "tricky.json"
        p.write_text(text)
        whole, specs = _assert_same(SourceConfig(path=str(p)), tmp_path, 1, None, min_shards=30)
        assert len(whole) == 30 and not any(w[4] for w in whole)
        # cut in the middle of a string of the last record: the truncated tail as from the whole read
        p.write_text(text[: text.rindex("𝄞")])
        whole, _ = _assert_same(SourceConfig(path=str(p)), tmp_path, 100, 2)
        assert whole[-1][4] == "read.truncated"


def test_json_array_unclosed_and_with_commas_to_skip(tmp_path):
    p = tmp_path / "open.json"
    p.write_text('[ {"id": "a", "conversations": []},, {"id": "b", "conversations": []} {"id": "c"},\n')
    whole, specs = _assert_same(SourceConfig(path=str(p)), tmp_path, 1)
    assert len(whole) == 3 and len(specs) == 3


def test_json_array_with_bare_values_is_one_shard(tmp_path):
    p = tmp_path / "scalars.json"
    p.write_text(json.dumps([{"id": "a", "conversations": []}, "text", 3, None, {"id": "b", "conversations": []}]))
    whole, specs = _assert_same(SourceConfig(path=str(p)), tmp_path, 1)
    assert len(whole) == 5 and len(specs) == 1


def test_json_array_syntax_error_mid_file_is_the_same_error(tmp_path):
    good = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"q{i}"}]} for i in range(20)]
    text = json.dumps(good, indent=1).replace('"q7"', '"q7" "oops"', 1)
    p = tmp_path / "bad.json"
    p.write_text(text)
    cfg = SourceConfig(path=str(p))
    with pytest.raises(SourceError) as whole_err:
        list(open_source(cfg, tmp_path)[0])
    with pytest.raises(SourceError) as shard_err:
        for spec in plan_shards(cfg, tmp_path, 1):
            list(read_shard(spec))
    assert str(shard_err.value) == str(whole_err.value)
    assert whole_err.value.record == 7 and "not valid JSON at byte" in whole_err.value.message


def test_parquet_row_groups(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    n = 0
    for f, sizes in enumerate([(5, 7, 3), (1,), (10, 10)]):
        tables = []
        for size in sizes:
            tables.append(pa.table({"id": [f"r{n + k}" for k in range(size)],
                                    "conversations": [[{"from": "human", "value": f"t{n + k}"}] for k in range(size)]}))
            n += size
        with pq.ParquetWriter(folder / f"part-{f}.parquet", tables[0].schema) as w:
            for t in tables:
                w.write_table(t)
    assert pq.ParquetFile(folder / "part-0.parquet").metadata.num_row_groups == 3
    cfg = SourceConfig(path=str(folder), format="parquet")
    whole, specs = _assert_same(cfg, tmp_path, 1, None)
    assert len(whole) == n == 36 and len(specs) == 6
    _, specs = _assert_same(cfg, tmp_path, 10**9, 12)
    assert [(s.start, s.stop) for s in specs] == [(0, 2), (2, 3), (0, 1), (0, 1), (1, 2)]
    _, specs = _assert_same(cfg, tmp_path, 10**9, None)
    assert len(specs) == 3  # a shard never spans two files
    for limit in (3, 15, 16, 20):
        _assert_same(SourceConfig(path=str(folder), format="parquet", limit=limit), tmp_path, 1)


def test_datasets_folder_is_one_shard(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_polars(pl.DataFrame({"id": ["a", "b", "c"], "conversations": [[], [], []]}))
    ds.save_to_disk(str(tmp_path / "ds"))
    cfg = SourceConfig(path=str(tmp_path / "ds"), format="datasets_folder", limit=2)
    whole, specs = _assert_same(cfg, tmp_path, 1)
    assert len(specs) == 1 and specs[0].kind == "dataset" and len(whole) == 2
