"""Issue 24, item 4: no known secret (HF_TOKEN, OPENAI_API_KEY, any backend's ``api_key_env``) is
written or printed, in error texts or in content: a Hub/proxy that echoes the token in an error body,
an answerer that echoes its API key into the conversation (fake servers on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()
REDACTED = "[redacted]"
ROOT = Path(__file__).resolve().parents[1]
KEY = "answerer-key-7f3Kq9Wz"  # no provider prefix: only knowing it finds it
HUB_TOKEN = "proxy-credential-93jfk2lq"


class Echo(BaseHTTPRequestHandler):
    """An OpenAI-compatible answerer that answers every chat request with the key it was sent, and a
    Hub/proxy that fails every request with an error body echoing the credential."""

    def log_message(self, *a):
        pass

    def _auth(self) -> str:
        return self.headers.get("Authorization", "")[len("Bearer "):]

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.endswith("/chat/completions"):
            text = f"Sure. For the record, the credential you sent me is {self._auth()} and that is all."
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 12, "total_tokens": 13}})
        else:
            self.do_GET()

    def do_GET(self):
        self._send(502, {"error": f"upstream refused the credential {self._auth()} "
                                  f"(Authorization: Bearer {self._auth()})"})


@pytest.fixture
def echo_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _no_secret_under(root: Path, secret: str) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_an_answerer_echoing_its_key_leaves_no_trace_in_data_exports_samples_or_card(
        make_recipe, write_json_array, sharegpt_records, tiny_model_dir, tmp_path, monkeypatch, echo_server):
    monkeypatch.setenv("ECHO_ANSWERER_KEY", KEY)
    path = make_recipe(write_json_array(sharegpt_records[:30]), filters=[{"op": "shape"}], name="sec")
    doc = yaml.safe_load(path.read_text())
    doc["steps"]["simulate"] = {
        "kind": "simulate", "simulator_backend": {"kind": "local", "model": str(tiny_model_dir), "batch_size": 4},
        "conversations": 4, "max_rounds": 1, "min_rounds": 0,
        "answerer": {"kind": "openai", "base_url": echo_server + "/v1", "model": "m",
                     "api_key_env": "ECHO_ANSWERER_KEY", "max_retries": 0, "timeout_s": 10},
        "user_sampling": {"max_new_tokens": 6}, "assistant_sampling": {"max_new_tokens": 16},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = runner.invoke(app, ["build", str(path), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "sec" / "simulate"
    answers = [m["content"] for msgs in pl.read_parquet(out / "data").get_column("messages").to_list()
               for m in msgs if m["role"] == "assistant"]
    assert answers and all(f"credential you sent me is {REDACTED} and" in a for a in answers), answers[:2]
    assert REDACTED in (out / "sharegpt" / "realchat.jsonl").read_text()
    assert list((tmp_path / "hub").rglob("README.md")), "the step was published"
    assert KEY not in r.output
    _no_secret_under(tmp_path, KEY)  # parquet, ShareGPT, manifest samples, card, part files, published copy


def test_a_hub_error_body_echoing_the_token_is_printed_redacted(make_recipe, write_json_array, sharegpt_records,
                                                                tmp_path, echo_server):
    path = make_recipe(write_json_array(sharegpt_records[:20]), filters=[{"op": "shape"}], name="sec")
    doc = yaml.safe_load(path.read_text())
    doc["publish"] = {"target": "hub", "namespace": "tester", "endpoint": echo_server}
    path.write_text(yaml.safe_dump(doc))
    assert runner.invoke(app, ["build", str(path), "--no-progress", "--no-push"]).exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_TOKEN": HUB_TOKEN, "REALCHAT_HUB_TIMEOUT": "5",
           "COLUMNS": "300"}
    r = subprocess.run([sys.executable, "-m", "realchat.cli", "push", str(path)], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2, out
    assert "whoami" in out and "502" in out and f"upstream refused the credential {REDACTED}" in out, out
    assert HUB_TOKEN not in out and "Traceback" not in out


def test_known_secrets_are_the_credential_variables_and_registered_api_key_envs(monkeypatch):
    from realchat.models.backends import Generation, OpenAIBackend, OpenAIChat
    from realchat.redact import known_secrets, scrub

    monkeypatch.setenv("HF_TOKEN", "hub-token-value-1")
    monkeypatch.setenv("MY_PROXY_KEY", "proxy-key-value-2")
    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")  # vLLM's placeholder: not a secret, the word stays
    assert "hub-token-value-1" in known_secrets() and "proxy-key-value-2" not in known_secrets()
    OpenAIChat(OpenAIBackend(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="MY_PROXY_KEY"))
    assert "proxy-key-value-2" in known_secrets()
    g = Generation("EMPTY answer with proxy-key-value-2 and hub-token-value-1 inside",
                   error="HTTP 401: Bearer proxy-key-value-2")
    assert g.text == f"EMPTY answer with {REDACTED} and {REDACTED} inside"
    assert "proxy-key-value-2" not in (g.error or "")
    assert scrub("talk about Bearer tokens") == "talk about Bearer tokens"  # content keeps its words
