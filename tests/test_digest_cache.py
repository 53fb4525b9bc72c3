"""The content-digest memo never trusts a file edited in place behind its back."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from realchat.cli import app
from realchat.models import content_digest

runner = CliRunner()


def test_file_edited_in_place_with_same_size_and_mtime_is_hashed_again(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_bytes(b"a" * 1000)
    first = content_digest(f)
    st = f.stat()
    assert content_digest(f) == first  # remembered
    with f.open("r+b") as fh:  # same size, one byte changed, mtime put back
        fh.seek(500)
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    second = content_digest(f)
    assert second != first
    import hashlib

    assert second == hashlib.sha256(f.read_bytes()).hexdigest()


def test_plan_sees_a_source_edited_in_place(make_recipe, write_json_array, sharegpt_records):
    records = sharegpt_records[:30]
    src = write_json_array(records)
    recipe = make_recipe(src, filters=[{"op": "shape"}], name="dg")
    r = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert r.exit_code == 0, r.output
    plan = runner.invoke(app, ["plan", str(recipe), "--json"])
    before = {s["name"]: s for s in json.loads(plan.stdout)}
    assert before["curate"]["done"]

    st = src.stat()
    text = src.read_text()
    edited = text.replace(records[0]["id"], records[0]["id"][::-1], 1)  # same length, other content
    assert edited != text and len(edited.encode()) == len(text.encode())
    with src.open("r+", encoding="utf-8") as fh:  # in place: same inode
        fh.write(edited)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    plan = runner.invoke(app, ["plan", str(recipe), "--json"])
    after = {s["name"]: s for s in json.loads(plan.stdout)}
    assert after["curate"]["fingerprint"] != before["curate"]["fingerprint"] and not after["curate"]["done"]
