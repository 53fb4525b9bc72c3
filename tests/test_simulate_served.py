"""Simulation through a real OpenAI-compatible server (``transformers serve`` on 127.0.0.1): both roles
served, kill -9 and resume, failures recorded; a server that fails every request (and echoes the API
key) fails the step with the first errors shown, redacted, and publishes nothing; a part file with
duplicate session ids is repaired on resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
import yaml
from serving import transformers_serve
from typer.testing import CliRunner

from realchat.cli import app
from realchat.redact import redact

runner = CliRunner()
SECRET = "sk-test-Zq8xY3vR9kLmN2pQ"


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """``transformers serve`` pinned to the tiny model; yields (base_url, log file)."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with transformers_serve(log, str(tiny_model_dir)) as base:
        yield base, log


@pytest.fixture
def served_recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, tmp_path, served):
    def make(answerer_model: str | None = None, sample: bool = True, **simulate) -> Path:
        src = write_json_array(sharegpt_records[:40])
        path = make_recipe(src, filters=[{"op": "shape"}], name="sim")
        doc = yaml.safe_load(path.read_text())
        # transformers serve samples only when the request's generation config says so
        sample = sample and {"generation_config": json.dumps({"do_sample": True, "eos_token_id": 2, "pad_token_id": 0})}
        server = {"kind": "openai", "base_url": served[0], "model": str(tiny_model_dir), "max_concurrency": 4,
                  "timeout_s": 60, "max_retries": 1, "api_key_env": "SERVED_KEY",
                  **({"extra_body": sample} if sample else {})}
        doc["steps"]["simulate"] = {
            "kind": "simulate", "simulator": "usergpt", "end_marker": "<|endconversation|>",
            "simulator_backend": {**server, "tokenizer": str(tiny_model_dir)},
            "answerer": {**server, "model": answerer_model or str(tiny_model_dir)},
            "conversations": 8, "max_rounds": 2, "context_budget": 512,
            "user_sampling": {"max_new_tokens": 6}, "assistant_sampling": {"max_new_tokens": 6}, **simulate,
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


def _out(tmp_path: Path, folder: str = "data") -> pl.DataFrame:
    return pl.read_parquet(sorted((tmp_path / "runs" / "sim" / "simulate" / folder).glob("*.parquet")))


def _requests(log: Path, endpoint: str) -> int:
    return sum(1 for line in log.read_text().splitlines() if f'"POST {endpoint} HTTP' in line and "200" in line)


def test_both_roles_served_complete_and_resume_after_kill(served_recipe, served, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVED_KEY", SECRET)
    recipe = served_recipe(conversations=24)
    assert runner.invoke(app, ["build", str(recipe), "--only", "curate", "--no-push"]).exit_code == 0
    completions, chats = _requests(served[1], "/v1/completions"), _requests(served[1], "/v1/chat/completions")
    proc = subprocess.Popen([sys.executable, "-m", "realchat.cli", "build", str(recipe), "--no-progress", "--no-push"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, parts = time.time() + 240, []
    while time.time() < deadline and proc.poll() is None:
        parts = list((tmp_path / "runs" / "sim" / ".work").glob("simulate-*/parts.jsonl"))
        if parts and len(parts[0].read_text().splitlines()) >= 6:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert parts, "the run wrote no part file before it was killed"
    before = len(parts[0].read_text().splitlines())
    assert 6 <= before < 24, before
    r = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert r.exit_code == 0, r.output
    kept, rejected = _out(tmp_path), _out(tmp_path, "rejected")
    ids = kept["session_id"].to_list() + rejected["session_id"].to_list()
    assert len(ids) == len(set(ids)) == 24
    stats = json.loads((tmp_path / "runs" / "sim" / "simulate" / "stats.json").read_text())
    assert stats["resumed_with"] >= before and stats["failed"] == 0
    # both roles went through the server: text completions for the simulator, chat for the answerer
    assert _requests(served[1], "/v1/completions") > completions
    assert _requests(served[1], "/v1/chat/completions") > chats
    # per-turn finish reasons as the server reported them (6 tokens: mostly cut at the limit)
    reasons = [f for fr in kept["finish_reasons"].to_list() for f in fr]
    assert len(reasons) == sum(kept["rounds"].to_list()) and set(reasons) <= {"stop", "length"}
    assert stats["truncated_answers"] == reasons.count("length") + stats["dropped_truncated_rounds"]
    assert "answers cut at the token limit" in (tmp_path / "runs" / "sim" / "simulate" / "README.md").read_text()
    # free mode without intents: every session's first user turn had the same context, and it sampled
    rep = stats["repeated_contexts"]["simulator"]
    assert rep["contexts_repeated"] >= 1 and rep["all_identical"] < rep["contexts_repeated"] and "warning" not in rep


def test_a_served_model_that_ignores_temperature_is_reported(served_recipe, tmp_path, monkeypatch):
    """The same server, without asking it to sample: transformers serve decodes greedily whatever the
    request's temperature says, so every session is the same one. The step says so, once per role."""
    monkeypatch.setenv("SERVED_KEY", SECRET)
    r = runner.invoke(app, ["build", str(served_recipe(sample=False, conversations=4, max_rounds=1)), "--no-progress",
                            "--no-push"])
    assert r.exit_code == 0, r.output
    kept = _out(tmp_path)
    assert len({json.dumps(m) for m in kept["messages"].to_list()}) == 1  # four identical sessions
    stats = json.loads((tmp_path / "runs" / "sim" / "simulate" / "stats.json").read_text())
    rep = stats["repeated_contexts"]
    assert rep["simulator"]["all_identical"] == rep["simulator"]["contexts_repeated"] == 1
    assert rep["simulator"]["draws"] == 4 and "decodes greedily" in rep["simulator"]["warning"]
    text = " ".join(r.output.split())
    assert text.count("wrote the same text every time") == 2  # simulator and answerer, once each


def test_served_failures_are_recorded_and_fail_the_step(served_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVED_KEY", SECRET)
    # the server is pinned to one model: asking for another is an HTTP 400 for every answer
    r = runner.invoke(app, ["build", str(served_recipe(answerer_model="not-served")), "--no-progress"])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "8 of 8 sessions failed" in text and "HTTP 400" in text and "pinned" in text
    assert not (tmp_path / "runs" / "sim" / "simulate").exists()
    assert not (tmp_path / "hub" / "datasets" / "realchat" / "sim-simulate").exists()
    parts = list((tmp_path / "runs" / "sim" / ".work").glob("simulate-*/parts.jsonl"))
    records = [json.loads(line)["record"] for line in parts[0].read_text().splitlines()]
    assert len(records) == 8 and all(r["stop_reason"] == "failed" and "HTTP 400" in r["error"] for r in records)


class EchoKey(BaseHTTPRequestHandler):
    """Fails every request with HTTP 400, echoing the request headers (Authorization included)."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"error": {"message": "bad request", "headers": dict(self.headers),
                                     "note": f"your key was {self.headers.get('Authorization', '')[7:]}"}})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())


def test_answerer_failing_every_request_fails_step_redacted(make_recipe, write_json_array, sharegpt_records,
                                                             tiny_model_dir, tmp_path, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoKey)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ECHO_KEY", SECRET)
    try:
        path = make_recipe(write_json_array(sharegpt_records[:30]), filters=[{"op": "shape"}], name="sim")
        doc = yaml.safe_load(path.read_text())
        local = {"kind": "local", "model": str(tiny_model_dir), "batch_size": 4}
        doc["steps"]["simulate"] = {
            "kind": "simulate", "simulator_backend": local, "conversations": 6, "max_rounds": 2,
            "answerer": {"kind": "openai", "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                         "model": "m", "api_key_env": "ECHO_KEY", "max_retries": 0, "timeout_s": 5},
            "user_sampling": {"max_new_tokens": 6}, "assistant_sampling": {"max_new_tokens": 6},
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        r = runner.invoke(app, ["build", str(path), "--no-progress"])
    finally:
        server.shutdown()
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "6 of 6 sessions failed" in text and "HTTP 400" in text and "[redacted]" in text
    assert SECRET not in r.output and SECRET[8:] not in r.output
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
    assert not (tmp_path / "runs" / "sim" / "simulate").exists()
    assert not list((tmp_path / "hub").glob("**/sim-simulate"))


def test_redact_removes_keys_and_token_shapes():
    text = ('HTTP 401: {"headers": {"Authorization": "Bearer abc.DEF-123_456"}, "api_key": "k3y-value", '
            '"hint": "use sk-proj-AbCdEf0123456789 or hf_AbCdEfGhIjKlMn or my-own-secret-9"}')
    out = redact(text, ["my-own-secret-9"])
    for secret in ("abc.DEF-123_456", "k3y-value", "sk-proj-AbCdEf0123456789", "hf_AbCdEfGhIjKlMn", "my-own-secret-9"):
        assert secret not in out
    assert out.startswith("HTTP 401") and '"Authorization": "[redacted]' in out and "[redacted]" in out
    assert redact("session abcd1234-000042 failed: HTTP 500: overloaded") == \
        "session abcd1234-000042 failed: HTTP 500: overloaded"  # ordinary text is left alone
    assert redact(None) is None


def _part_line(record: dict) -> str:
    body = json.dumps(record, sort_keys=True, ensure_ascii=False)
    return json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest(), "record": record}, ensure_ascii=False)


def test_resume_repairs_part_file_with_duplicate_ids(make_recipe, write_json_array, sharegpt_records,
                                                      tiny_model_dir, tmp_path):
    path = make_recipe(write_json_array(sharegpt_records[:30]), filters=[{"op": "shape"}], name="sim")
    doc = yaml.safe_load(path.read_text())
    local = {"kind": "local", "model": str(tiny_model_dir), "batch_size": 4}
    doc["steps"]["simulate"] = {"kind": "simulate", "simulator_backend": local, "answerer": local,
                                "conversations": 6, "max_rounds": 1, "stop_on_degenerate": False,
                                "user_sampling": {"max_new_tokens": 4}, "assistant_sampling": {"max_new_tokens": 4}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert runner.invoke(app, ["build", str(path), "--only", "curate", "--no-push"]).exit_code == 0
    plan = json.loads(runner.invoke(app, ["plan", str(path), "--json"]).stdout)
    fp = next(p["fingerprint"] for p in plan if p["name"] == "simulate")
    work = tmp_path / "runs" / "sim" / ".work" / f"simulate-{fp[:16]}"
    work.mkdir(parents=True)

    def rec(i: int, question: str, stop: str = "max_rounds", rounds: int = 1) -> dict:
        msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": "An answer."}][: 2 * rounds]
        return {"session_id": f"{fp[:8]}-{i:06d}", "mode": "free", "seed_id": None, "messages": msgs,
                "rounds": rounds, "stop_reason": stop, "error": None if stop != "failed" else "HTTP 500",
                "settings_id": "x"}

    # two racing runs wrote sessions 0 and 1 twice (different content), and session 2 failed
    lines = [rec(0, "first of 0"), rec(1, "first of 1"), rec(0, "second of 0"), rec(1, "second of 1"),
             rec(2, "q", "failed", 0), rec(0, "third of 0")]
    (work / "parts.jsonl").write_text("".join(_part_line(r) + "\n" for r in lines))
    r = runner.invoke(app, ["build", str(path), "--no-progress", "--no-push"])
    assert r.exit_code == 0, r.output
    df = pl.concat([_out(tmp_path), _out(tmp_path, "rejected")], how="diagonal_relaxed")
    assert df.height == 6 and df["session_id"].n_unique() == 6
    first = {sid: msgs[0]["content"] for sid, msgs in zip(df["session_id"].to_list(), df["messages"].to_list()) if msgs}
    assert first[f"{fp[:8]}-000000"] == "first of 0" and first[f"{fp[:8]}-000001"] == "first of 1"
    # the failed session was simulated again
    again = df.filter(pl.col("session_id") == f"{fp[:8]}-000002")
    assert again["stop_reason"][0] != "failed"
    stats = json.loads((tmp_path / "runs" / "sim" / "simulate" / "stats.json").read_text())
    assert stats["resumed_with"] == 2
