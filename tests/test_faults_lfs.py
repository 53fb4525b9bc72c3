"""Hub LFS uploads that fail part-way through a commit: one clear error, nothing half-published.

huggingface_hub uploads a commit's LFS files (the parquet shards, safetensors) one by one before the
commit itself; the tests' Hub (tests/hub_server.py) is told to fail the n-th of them, with a 500 or a
dropped connection. The build must stop with one line naming the step, the repo and the file whose
upload failed (exit 2, no traceback), keep the built step, leave the repo's head where it was, and a
later ``realchat push`` must complete the publish.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output, result.exception


def hub_recipe(make_recipe, write_records, records: list[dict], repo: str) -> Path:
    """A curate recipe publishing to ``tester/<repo>`` on the tests' Hub (records of its own, so
    that the Hub holds none of its LFS objects yet: each one is uploaded)."""
    path = make_recipe(write_records(records), filters=[{"op": "shape"}, {"op": "exact_dedup"}], name="lfsfault")
    doc = yaml.safe_load(path.read_text())
    doc["publish"] = {"target": "hub", "namespace": "tester", "repos": {"curate": repo}}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("how,first", [("500", 0), ("reset", 80)])
def test_lfs_upload_failing_midway_is_one_error_and_push_completes(hub, make_recipe, write_json_array,
                                                                   sharegpt_records, tmp_path, how, first):
    repo = f"tester/lfs-fault-{how}"
    recipe = hub_recipe(make_recipe, write_json_array, sharegpt_records[first:first + 80], repo.split("/")[1])
    hub.state.fail_lfs_upload, hub.state.lfs_uploads_seen = (2, how), 0  # the first upload goes through
    try:
        code, out, exc = invoke("build", str(recipe), "--no-progress")
    finally:
        hub.state.fail_lfs_upload = None
    assert hub.state.lfs_uploads_seen >= 2  # the fault was met: a second LFS file was being uploaded
    assert code == 2, (out, exc)
    assert "Traceback" not in out
    line = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(line) == 1, out
    assert "curate" in line[0] and repo in line[0] and "upload" in line[0] and ".parquet" in line[0], line[0]
    assert "push" in out  # says how to finish the publish

    # the build is done; nothing half-published: the repo holds no commit of this step
    runs = tmp_path / "runs" / "lfsfault"
    manifest = json.loads((runs / "curate" / "manifest.json").read_text())
    assert not (runs / "published" / "curate.json").exists()
    assert all(c.title == "initial commit" for c in hub.history("dataset", repo))

    code, out, exc = invoke("push", str(recipe))
    assert code == 0, (out, exc)
    history = hub.history("dataset", repo)
    assert history[0].title == f"realchat curate: fingerprint {manifest['fingerprint']}"
    assert any(p.startswith("data/") and p.endswith(".parquet") for p in history[0].files)
    record = json.loads((runs / "published" / "curate.json").read_text())
    assert record["revision"] == hub.head("dataset", repo)
