"""Readers: the shipped cut-off file, made-up bad input, and every supported format."""

from __future__ import annotations

import json

import polars as pl
import pytest

from realchat.curation.conversations import normalize
from realchat.errors import SourceError
from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source
from realchat.curation.sources.base import ReadReport
from realchat.curation.sources.json_stream import iter_json_records

from conftest import SHAREGPT


def test_shipped_file_is_cut_off_and_every_complete_record_is_kept():
    report = ReadReport(path=str(SHAREGPT), format="sharegpt")
    records = list(iter_json_records(SHAREGPT, report))
    complete = [r for r in records if r.error is None]
    assert len(complete) == 17_671
    assert records[-1].error == "read.truncated"
    assert records[-1].index == 17_671
    # the fragment is the real tail of the file: it starts where the last complete record ended
    tail = SHAREGPT.read_bytes()[report.truncated_at_byte:]
    assert tail.decode("utf-8").strip().startswith("{")
    assert records[-1].raw.startswith(tail.decode("utf-8")[:200])
    assert any(f"byte {report.truncated_at_byte}" in w for w in report.warnings)
    assert complete[0].data["id"] == "QWJhYvA_0"


def test_cut_in_the_middle_of_a_record(write_json_array, tmp_path):
    good = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"q{i}"}]} for i in range(3)]
    text = json.dumps(good, indent=1)
    cut = text[: text.rindex('"q2"') + 2]  # stop inside the last record's string
    p = tmp_path / "cut.json"
    p.write_text(cut)
    report = ReadReport(path=str(p), format="sharegpt")
    recs = list(iter_json_records(p, report))
    assert [r.data["id"] for r in recs if r.error is None] == ["c0", "c1"]
    assert recs[-1].error == "read.truncated" and recs[-1].index == 2
    assert report.truncated_at_byte == len(text[: text.index('{\n  "id": "c2"')].encode())


def test_array_without_closing_bracket(tmp_path):
    p = tmp_path / "open.json"
    p.write_text('[{"id": "a", "conversations": []},\n')
    report = ReadReport(path=str(p), format="sharegpt")
    recs = list(iter_json_records(p, report))
    assert len(recs) == 1 and recs[0].error is None
    assert "not closed" in report.warnings[0]


def test_syntax_error_in_the_middle_names_record_and_byte(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[{"id": "a", "conversations": []},\n {"id": "b", "conversations": [}] ,\n {"id": "c", "conversations": []}]')
    with pytest.raises(SourceError) as e:
        list(iter_json_records(p, ReadReport(path=str(p), format="sharegpt")))
    msg = str(e.value)
    start = p.read_text().index('{"id": "b"')  # where record 1 begins
    assert "bad.json" in msg and "record 1" in msg and f"byte {start}" in msg


def test_invalid_utf8_is_rejected_with_its_field(tmp_path):
    p = tmp_path / "utf8.json"
    p.write_bytes(b'[{"id": "ok", "conversations": [{"from": "human", "value": "hi"}]},'
                  b'{"id": "bad", "conversations": [{"from": "human", "value": "ok"}, {"from": "gpt", "value": "caf\xe9 \xff"}]}]')
    recs = list(iter_json_records(p, ReadReport(path=str(p), format="sharegpt")))
    row, rej = normalize(recs[0], DEFAULT_ROLES, "id", "utf8")
    assert row is not None and rej is None
    row, rej = normalize(recs[1], DEFAULT_ROLES, "id", "utf8")
    assert row is None
    assert rej.reason == "record.invalid_utf8"
    assert "conversations[1].value" in rej.detail
    assert "\\xe9" in rej.raw  # the bad bytes are kept, escaped, in the rejected row


def test_jsonl_bad_line_and_cut_last_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n'
                 'not json\n'
                 '{"id": "c", "messages": [{"role": "user", "content": "hi"}]}\n'
                 '{"id": "d", "messa')
    report = ReadReport(path=str(p), format="openai_messages")
    recs = list(iter_json_records(p, report))
    assert [r.error for r in recs] == [None, "read.invalid_json", None, "read.truncated"]
    assert recs[1].position == "line 2"
    assert "line 4" in report.warnings[0]


@pytest.mark.parametrize(
    "record, reason, field",
    [
        ([1, 2], "record.wrong_type", "(record)"),
        ({"id": "x"}, "record.missing_field", "conversations"),
        ({"id": "x", "conversations": "hello"}, "record.wrong_type", "conversations"),
        ({"id": "x", "conversations": [{"from": "human", "value": 3}]}, "record.wrong_type", "conversations[0].value"),
        ({"id": "x", "conversations": [{"from": "human"}]}, "record.missing_field", "conversations[0].value"),
        ({"id": "x", "conversations": [{"from": "wizard", "value": "hi"}]}, "record.unmapped_role", "conversations[0].from"),
        ({"id": {"a": 1}, "conversations": []}, "record.wrong_type", "id"),
    ],
)
def test_bad_records_are_rejected_with_reason_and_field(tmp_path, record, reason, field):
    p = tmp_path / "x.json"
    p.write_text(json.dumps([record]))
    rec = next(iter_json_records(p, ReadReport(path=str(p), format="sharegpt")))
    row, rej = normalize(rec, DEFAULT_ROLES, "id", "x")
    assert row is None
    assert rej.reason == reason
    assert f": {field}:" in rej.detail


def test_real_roles_of_the_shipped_data_map(sharegpt_records):
    """human/gpt/system and friends all map with the default table; unknown ones would not."""
    seen = {m["from"] for r in sharegpt_records for m in r["conversations"]}
    assert {"human", "gpt"} <= seen
    assert seen <= set(DEFAULT_ROLES)


def test_openai_messages_and_parquet_sources(tmp_path):
    rows = [{"id": "p1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"id": "p2", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}]
    j = tmp_path / "m.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    it, _ = open_source(SourceConfig(format="openai_messages", path=str(j)), tmp_path)
    out = [normalize(r, DEFAULT_ROLES, "id", "m")[0] for r in it]
    assert out[1]["messages"] == [{"role": "user", "content": "ab"}]
    pq = tmp_path / "m.parquet"
    pl.DataFrame([rows[0]]).write_parquet(pq)
    it, _ = open_source(SourceConfig(format="parquet", path=str(pq)), tmp_path)
    row = normalize(next(it), DEFAULT_ROLES, "id", "m")[0]
    assert row["conversation_id"] == "p1" and row["messages"][1]["content"] == "hello"


def test_datasets_folder_source(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"id": "d1", "conversations": [{"from": "human", "value": "q"}]}])
    ds.save_to_disk(str(tmp_path / "ds"))
    it, _ = open_source(SourceConfig(format="datasets_folder", path=str(tmp_path / "ds")), tmp_path)
    row = normalize(next(it), DEFAULT_ROLES, "id", "m")[0]
    assert row["messages"] == [{"role": "user", "content": "q"}]
