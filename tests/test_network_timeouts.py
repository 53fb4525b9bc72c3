"""A Hub endpoint that accepts connections and never answers, and one that answers 200 with a web
page: publishing fails with one clear line and exit 2 (the timeout short, set by the environment)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


class BadServer:
    """A TCP server on 127.0.0.1: ``hang`` accepts and never answers; ``drop`` closes each connection
    as soon as it is accepted (and counts them in ``conns``); ``html`` answers every request
    with 200 and a web page (a captive portal, a proxy's login page)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.conns: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)  # kept open: the client waits on it
            if self.mode == "drop":  # closed at once: the client sees the connection dropped
                conn.close()
            if self.mode == "html":
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        body = b"<!doctype html><html><body><h1>Welcome to the network</h1></body></html>"
        try:
            while conn.recv(65536):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture(autouse=True)
def _default_timeouts_after():
    """Tests here install short timeouts; the next test gets the defaults again (the environment
    variables are gone by then: each test sets them with monkeypatch or in a subprocess)."""
    yield
    from realchat.hub.http import install_timeouts

    os.environ.pop("REALCHAT_HUB_TIMEOUT", None)
    os.environ.pop("REALCHAT_HUB_CONNECT_TIMEOUT", None)
    install_timeouts()


@pytest.fixture
def bad_server(request):
    server = BadServer(request.param)
    yield server
    server.close()


@pytest.fixture
def built_recipe(make_recipe, write_json_array, sharegpt_records):
    def make(endpoint: str) -> Path:
        src = write_json_array(sharegpt_records[:20])
        path = make_recipe(src, filters=[{"op": "shape"}], name="net")
        doc = yaml.safe_load(path.read_text())
        doc["publish"] = {"target": "hub", "namespace": "tester", "endpoint": endpoint}
        path.write_text(yaml.safe_dump(doc))
        r = runner.invoke(app, ["build", str(path), "--no-progress", "--no-push"])
        assert r.exit_code == 0, r.output
        return path

    return make


def push_in_subprocess(recipe: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_TOKEN": "hf_write", "REALCHAT_HUB_TIMEOUT": "1",
           "REALCHAT_HUB_CONNECT_TIMEOUT": "1", "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1",
           "COLUMNS": "300"}
    # the subprocess's own limit only guards the test suite against the hang this test is about
    return subprocess.run([sys.executable, "-m", "realchat.cli", "push", str(recipe)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("bad_server", ["hang"], indirect=True)
def test_hub_that_never_answers_fails_with_one_line(bad_server, built_recipe, tmp_path):
    r = push_in_subprocess(built_recipe(bad_server.url), tmp_path)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2, out
    assert f"whoami: {bad_server.url} accepted the connection but sent no answer within 1 s" in out
    assert "REALCHAT_HUB_TIMEOUT" in out and "Traceback" not in out


@pytest.mark.parametrize("bad_server", ["hang"], indirect=True)
def test_lineage_from_a_hub_that_never_answers_fails_with_one_line(bad_server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": bad_server.url, "REALCHAT_HUB_TIMEOUT": "1",
           "COLUMNS": "300"}
    r = subprocess.run([sys.executable, "-m", "realchat.cli", "lineage", "someone/some-data"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2, out
    assert f"lineage of someone/some-data: {bad_server.url} accepted the connection but sent no answer within 1 s" in out
    assert "Traceback" not in out and "Retry" not in out  # one request, not hf_hub_download's minutes of retries


def _lineage(ref: str, endpoint: str, tmp_path: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": endpoint, "COLUMNS": "300"}
    r = subprocess.run([sys.executable, "-m", "realchat.cli", "lineage", ref], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)
    return r.returncode, " ".join((r.stdout + r.stderr).split())


@pytest.mark.parametrize("bad_server", ["drop"], indirect=True)
def test_lineage_of_a_typo_on_an_unreachable_hub_asks_once(bad_server, tmp_path):
    """A mistyped folder reads as a Hub id; a Hub that drops the connection is one connection and one
    line naming the typo, not huggingface_hub's retries with backoff."""
    code, out = _lineage("runs/hub/datasets/realchat/typo", bad_server.url, tmp_path)
    assert code == 2, out
    assert "runs/hub/datasets/realchat/typo: no such folder here, and cannot reach" in out and bad_server.url in out
    assert "check the spelling" in out and "Traceback" not in out and "Retry" not in out
    assert len(bad_server.conns) == 1  # asked once


def test_lineage_on_a_closed_port_is_one_line(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()  # nothing listens there: connections are refused
    code, out = _lineage("someone/typo", url, tmp_path)
    assert code == 2 and f"someone/typo: no such folder here, and cannot reach {url}" in out, out
    assert "Traceback" not in out and "Retry" not in out


def test_lineage_offline_reads_the_cache_only(tmp_path, monkeypatch):
    """With HF_HUB_OFFLINE nothing is asked of the network: a repo not in the cache is one line."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out = _lineage("someone/typo", "http://127.0.0.1:9", tmp_path)
    assert code == 2 and "someone/typo: not a folder with a card, nor a readable Hub repo" in out, out
    assert "Traceback" not in out


@pytest.mark.parametrize("bad_server", ["html"], indirect=True)
def test_hub_that_answers_with_a_web_page_fails_with_one_line(bad_server, built_recipe, tmp_path):
    r = push_in_subprocess(built_recipe(bad_server.url), tmp_path)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2, out
    assert f"whoami: {bad_server.url} did not answer like a Hugging Face Hub" in out and "Traceback" not in out


def test_timeouts_are_filled_in_where_a_call_left_them_unset(monkeypatch):
    import httpx2
    from huggingface_hub import get_session

    from realchat.hub.http import install_timeouts

    monkeypatch.setenv("REALCHAT_HUB_TIMEOUT", "7")
    monkeypatch.setenv("REALCHAT_HUB_CONNECT_TIMEOUT", "3")
    install_timeouts()
    request = httpx2.Request("GET", "http://127.0.0.1:9/x", extensions={"timeout": httpx2.Timeout(None).as_dict()})
    for hook in get_session().event_hooks["request"]:
        if hook.__name__ == "fill":
            hook(request)
    assert request.extensions["timeout"] == {"connect": 3.0, "read": 7.0, "write": 7.0, "pool": 7.0}
    kept = httpx2.Request("GET", "http://127.0.0.1:9/x", extensions={"timeout": httpx2.Timeout(2.0).as_dict()})
    next(h for h in get_session().event_hooks["request"] if h.__name__ == "fill")(kept)
    assert kept.extensions["timeout"]["read"] == 2.0  # a call's own shorter timeout is kept
    capped = httpx2.Request("GET", "http://127.0.0.1:9/x", extensions={"timeout": httpx2.Timeout(60.0).as_dict()})
    next(h for h in get_session().event_hooks["request"] if h.__name__ == "fill")(capped)
    assert capped.extensions["timeout"]["read"] == 7.0  # a longer one (hf_hub_download's 60 s retry) is capped

    monkeypatch.setenv("REALCHAT_HUB_TIMEOUT", "soon")
    from realchat.errors import RealChatError

    with pytest.raises(RealChatError, match="REALCHAT_HUB_TIMEOUT='soon': expected a number of seconds"):
        install_timeouts()
    monkeypatch.delenv("REALCHAT_HUB_TIMEOUT")
    monkeypatch.delenv("REALCHAT_HUB_CONNECT_TIMEOUT")


@pytest.mark.parametrize("bad_server", ["hang"], indirect=True)
def test_a_slow_answer_says_what_it_waits_for(bad_server, monkeypatch):
    from realchat.hub.publish import HubPublisher, PublishError
    from realchat.recipe.schema import PublishConfig

    monkeypatch.setenv("HF_TOKEN", "hf_write")
    monkeypatch.setenv("REALCHAT_HUB_TIMEOUT", "1")
    monkeypatch.setattr(HubPublisher, "SAY_WAITING_AFTER_S", 0.2)
    said: list[str] = []
    publisher = HubPublisher(PublishConfig(target="hub", namespace="tester", endpoint=bad_server.url), log=said.append)
    with pytest.raises(PublishError, match="whoami: .* sent no answer within 1 s"):
        publisher._call("whoami", publisher.api.whoami)
    assert said and said[0].startswith(f"waiting for {bad_server.url} to answer: whoami (gives up after 1 s")
