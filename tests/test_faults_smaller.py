"""Issue 24, item 7: smaller faults. A Retry-After the client will not wait for is reported as one
attempt; a failing simulator is blamed, not the answerer; a publish cut off while it removes the
previous revision leaves a folder that is still swept; a user's file ``data`` is a clash, not moved to
``data/data``; a card's ``repo_path`` cannot lead lineage outside the publish root; cards without repo
or fingerprint keep their subtrees; a full disk names the file; ``push --wait`` exists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, " ".join(r.output.split())


# -- fake OpenAI-compatible servers -----------------------------------------------------------------


class Fake(BaseHTTPRequestHandler):
    """``/rate/…``: 429 with Retry-After 3600; ``/null/…``: completions whose text is null."""

    requests: list[str] = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Fake.requests.append(self.path)
        if self.path.startswith("/rate/"):
            body, status, extra = {"error": {"message": "slow down"}}, 429, {"Retry-After": "3600"}
        else:
            body, status, extra = {"id": "x", "object": "text_completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "text": None, "finish_reason": "stop"}]}, 200, {}
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **extra}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Fake.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_retry_after_longer_than_the_client_waits_is_one_attempt_not_three(fake):
    from realchat.models.backends import OpenAIBackend, OpenAIChat
    from realchat.recipe.base import SamplingParams

    model = OpenAIChat(OpenAIBackend(base_url=fake + "/rate/v1", model="m", max_retries=2, timeout_s=10))
    [g] = model.chat([[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=4))
    assert len(Fake.requests) == 1
    assert g.error is not None and "attempts" not in g.error, g.error
    assert "not retried (the server asked to wait 3600 s" in g.error and "HTTP 429" in g.error


def _sim_recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, simulator: dict) -> Path:
    path = make_recipe(write_json_array(sharegpt_records[:20]), filters=[{"op": "shape"}], name="sim")
    doc = yaml.safe_load(path.read_text())
    doc["steps"]["simulate"] = {
        "kind": "simulate", "simulator": "roleplay", "conversations": 3, "max_rounds": 1,
        "simulator_backend": {"kind": "openai", "model": "m", "tokenizer": str(tiny_model_dir), "max_retries": 0,
                              "timeout_s": 5, "connect_timeout_s": 2, **simulator},
        "answerer": {"kind": "local", "model": str(tiny_model_dir), "batch_size": 4},
        "user_sampling": {"max_new_tokens": 4}, "assistant_sampling": {"max_new_tokens": 4},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("where", ["unreachable", "text null"])
def test_a_failing_simulator_is_blamed_not_the_answerer(where, make_recipe, write_json_array, sharegpt_records,
                                                       tiny_model_dir, fake):
    from hub_server import free_port

    base = f"http://127.0.0.1:{free_port()}/v1" if where == "unreachable" else fake + "/null/v1"
    recipe = _sim_recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, {"base_url": base})
    code, out = cli("build", str(recipe), "--no-progress", "--no-push")
    assert code == 2, out
    assert "steps.simulate.simulator_backend: 3 of 3 sessions failed" in out, out
    assert "- simulator_backend: " in out and "steps.simulate.answerer" not in out


# -- local publishing -------------------------------------------------------------------------------


def _step_folder(path: Path, fp: str, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"step": "s", "fingerprint": fp}))
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def test_a_users_file_named_like_a_folder_realchat_writes_is_a_clash(tmp_path):
    from realchat.hub.publish import PublishError, _publish_local

    dest = tmp_path / "hub" / "datasets" / "ns" / "x"
    first = _step_folder(tmp_path / "a", "a", {"data/train.parquet": "1"})
    _publish_local(dest, first, "card", "a", log=lambda m: None)
    (dest / "data" / "train.parquet").unlink()
    (dest / "data").rmdir()
    (dest / "data").write_text("the user's notes, in a file called data")
    second = _step_folder(tmp_path / "b", "b", {"data/train.parquet": "2"})
    with pytest.raises(PublishError, match="a file RealChat did not write is where it publishes data"):
        _publish_local(dest, second, "card b", "b", log=lambda m: None)
    assert (dest / "data").read_text() == "the user's notes, in a file called data"  # nothing moved


CHILD = r"""
import os, signal, sys
from pathlib import Path
from realchat.files import atomic_folder

folder, kill_at = Path(sys.argv[1]), int(sys.argv[2])
real, count = os.unlink, [0]

def unlink(*args, **kwargs):
    real(*args, **kwargs)
    count[0] += 1
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

os.unlink = unlink
with atomic_folder(folder) as tmp:
    (tmp / "new.txt").write_text("new")
"""


def test_a_publish_killed_while_it_removes_the_previous_revision_leaves_only_what_is_swept(tmp_path):
    from realchat.files import TEMP_MARK, clean_stale

    # every point of the removal: unlink 1 is the new folder's mark, 2-6 the old files, 7 the old mark
    # (only a kill between that and the folder's rmdir can leave the folder: empty, nothing lost)
    for kill_at in range(1, 8):
        folder = tmp_path / f"repo{kill_at}"
        folder.mkdir()
        for i in range(5):
            (folder / f"old-{i}.txt").write_text("old")
        subprocess.run([sys.executable, "-c", CHILD, str(folder), str(kill_at)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                       timeout=60)
        clean_stale(folder)
        left = [p for p in tmp_path.iterdir() if p.name.startswith(f".repo{kill_at}.")]
        assert left == [] or (kill_at == 7 and all(not any(p.iterdir()) for p in left)), (kill_at, left)
        assert (folder / "new.txt").read_text() == "new" and not (folder / TEMP_MARK).exists()


# -- lineage ----------------------------------------------------------------------------------------


def _card(folder: Path, block: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("---\n" + yaml.safe_dump({"realchat": block}) + "---\n\n# card\n")


def test_a_repo_path_leaving_the_publish_root_is_not_followed(tmp_path):
    root = tmp_path / "hub"
    _card(tmp_path / "secret", {"step": "secret", "repo": "x/secret", "fingerprint": "s", "parents": []})
    (tmp_path / "outside").mkdir()
    _card(tmp_path / "outside" / "card", {"step": "secret", "repo": "x/secret", "fingerprint": "s", "parents": []})
    parents = [{"key": "a", "step": "p", "repo_path": "../secret"},
               {"key": "b", "step": "q", "repo_path": str(tmp_path / "outside" / "card")},
               {"key": "c", "step": "r", "repo_path": "datasets/ns/../../../secret"}]
    _card(root / "datasets" / "ns" / "child", {"step": "child", "repo": "ns/child", "fingerprint": "f",
                                               "repo_path": "datasets/ns/child", "parents": parents})
    code, out = cli("lineage", str(root / "datasets" / "ns" / "child"), "--json")
    assert code == 0, out
    chain = json.loads(out)
    assert [c["key"] for c in chain] == [None, "a", "b", "c"]
    assert all(c["where"] == "?" and "leaves the publish root: not followed" in c["note"] for c in chain[1:])
    assert not any(c.get("step") == "secret" for c in chain)


def test_cards_without_repo_or_fingerprint_keep_their_subtrees(tmp_path):
    root = tmp_path / "hub"
    for name in ("a", "b"):
        _card(root / "datasets" / "ns" / name, {"step": name, "repo_path": f"datasets/ns/{name}",
                                                "parents": [{"key": "source", "source": f"{name}.json", "role": "dataset"}]})
    _card(root / "datasets" / "ns" / "top", {"step": "top", "repo_path": "datasets/ns/top", "parents": [
        {"key": "a", "step": "a", "repo_path": "datasets/ns/a"}, {"key": "b", "step": "b", "repo_path": "datasets/ns/b"}]})
    code, out = cli("lineage", str(root / "datasets" / "ns" / "top"), "--json")
    assert code == 0, out
    chain = json.loads(out)
    assert [(c["depth"], c["step"] or c["where"]) for c in chain] == [
        (0, "top"), (1, "a"), (2, "a.json"), (1, "b"), (2, "b.json")]
    assert not any(c.get("seen") for c in chain)


# -- full disk, push --wait -------------------------------------------------------------------------


def test_a_full_disk_names_the_part_file_and_the_parquet_part(tmp_path):
    import polars as pl

    from realchat.curation.parts import ShardWriter
    from realchat.errors import UserFileError, boundary_error
    from realchat.steps.simulate import PartWriter

    parts = tmp_path / "work" / "parts.jsonl"
    parts.parent.mkdir()
    parts.symlink_to("/dev/full")  # a real device that answers every write with ENOSPC
    writer = PartWriter(parts)
    with pytest.raises(UserFileError) as e:
        writer.write({"session_id": "x", "messages": []})
        writer.close()
    assert str(parts) in e.value.render() and "no space left on device" in e.value.render()

    folder = tmp_path / "rejected"
    folder.mkdir()
    (folder / "part-00000.parquet").symlink_to("/dev/full")
    shards = ShardWriter(folder, shard_rows=1000)
    with pytest.raises(Exception) as e:
        shards.write(pl.DataFrame({"a": list(range(50_000))}))
        shards.close()
    err = boundary_error(e.value)
    assert err is not None and str(folder / "part-00000.parquet") in err.render()
    assert "no space left on device" in err.render()


def test_push_has_the_wait_its_lock_message_suggests(make_recipe, write_json_array, sharegpt_records, tmp_path):
    import fcntl

    recipe = make_recipe(write_json_array(sharegpt_records[:10]), filters=[{"op": "shape"}])
    assert cli("build", str(recipe), "--no-progress", "--no-push")[0] == 0
    lock = tmp_path / "runs" / "t" / ".lock"
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another build holds the run folder
    try:
        code, out = cli("push", str(recipe))
        assert code == 2 and "--wait SECONDS" in out, out
        threading.Timer(1.0, lambda: fcntl.flock(fd, fcntl.LOCK_UN)).start()
        code, out = cli("push", str(recipe), "--wait", "30")
        assert code == 0, out
        assert "waiting for the lock" in out
    finally:
        os.close(fd)
