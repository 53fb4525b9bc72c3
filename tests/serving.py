"""A real OpenAI-compatible server for the tests: ``transformers serve`` on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hub_server import free_port


@contextmanager
def transformers_serve(log: Path, model: str | None = None, timeout_s: float = 240,
                       cwd: Path | None = None) -> Iterator[str]:
    """``transformers serve`` pinned to ``model`` (None: it loads the folder each request names; a
    relative one is found from ``cwd``); yields its base URL (``…/v1``), kills it on the way out."""
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(exe), "serve", *([model] if model else []), "--host", "127.0.0.1", "--port", str(port),
           "--device", "cpu", "--log-level", "info"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
            assert proc.poll() is None, log.read_text()[-2000:]
        else:
            pytest.fail("transformers serve did not come up: " + log.read_text()[-2000:])
        yield base + "/v1"
    finally:
        proc.kill()
        proc.wait()
