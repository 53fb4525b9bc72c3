"""An OpenAI-compatible server that trickles its answer (a byte every 0.1 s: never silent long enough
for a read timeout) is cut at ``timeout_s``, per attempt: the request fails as a timeout instead of
holding the step for as long as the server likes."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from realchat.models.backends import OpenAIBackend, OpenAIChat
from realchat.recipe.base import SamplingParams

ANSWER = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "a slow but complete answer"}}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}}).encode()


class Trickle(BaseHTTPRequestHandler):
    """Headers at once, then the (valid) body one byte every 0.1 s: about 30 s for the whole answer."""

    requests = 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        try:
            for b in ANSWER:
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client gave up: what is wanted
            pass


@pytest.fixture
def trickle():
    Trickle.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_trickling_answer_is_cut_at_the_deadline_each_attempt(trickle):
    chat = OpenAIChat(OpenAIBackend(base_url=trickle, model="m", timeout_s=1.5, max_retries=1))
    [g] = chat.chat([[{"role": "user", "content": "hello?"}]], SamplingParams(max_new_tokens=8))
    assert g.text == "" and g.error is not None and "timed out" in g.error, g
    assert Trickle.requests == 2  # the first attempt and its one retry, each cut at its own deadline


def test_a_prompt_answer_is_untouched_by_the_deadline(trickle, monkeypatch):
    """Control: the same server answering at once (no trickle) gets through with the same settings."""
    monkeypatch.setattr(time, "sleep", lambda s: None)  # the handler's pauses only (it runs in this process)
    chat = OpenAIChat(OpenAIBackend(base_url=trickle, model="m", timeout_s=1.5, max_retries=0))
    [g] = chat.chat([[{"role": "user", "content": "hello?"}]], SamplingParams(max_new_tokens=8))
    assert g.error is None and g.text == "a slow but complete answer" and g.tokens == 5
