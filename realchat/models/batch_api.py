"""OpenAI's Batch API for chat completions (``batch: true`` on an ``openai`` backend): half the price,
answers within the completion window instead of at once.

One call of :func:`run_batch` is one batch: the requests are written as a JSONL file, uploaded
(``files.create``, purpose ``batch``), submitted (``batches.create``), polled (``batches.retrieve``)
until the batch ends, and the output and error files are read back (``files.content``), each answer
matched to its request by ``custom_id``. All of it through the ``openai`` client.

A batch is paid once, whatever happens to this process: the uploaded file's id, then the batch's id,
are written (atomically, each before the next request goes out) to a state file named by the sha256
of the requests, in the step's work folder. A rerun after a crash or ``kill -9`` that asks for the same
requests finds the state file and re-attaches to the batch already submitted (or submits the file
already uploaded) instead of paying again. A batch that ended ``failed``, ``expired`` or ``cancelled``
has its state file removed, so the next run submits the requests anew; the answers of a completed
batch stay attached to its requests until the step is done (its work folder goes then). A completed
batch may still have failed some of its requests (an error line each): a rerun that re-attaches to
it resubmits just those in a new batch (state file keyed by the old batch's id and the failed
requests), so a request is never stuck on an old failure, and what answered is not paid again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from realchat.files import read_json, write_json

#: The batch is over (``completed``: read its files; the others: what ended is reported per request).
FINAL = ("completed", "failed", "expired", "cancelled")
ENDPOINT = "/v1/chat/completions"


def request_lines(bodies: list[dict[str, Any]]) -> bytes:
    """The batch input file: one request per line, ``custom_id`` = its position."""
    return "".join(json.dumps({"custom_id": f"request-{i}", "method": "POST", "url": ENDPOINT, "body": body},
                              ensure_ascii=False, sort_keys=True) + "\n" for i, body in enumerate(bodies)).encode()


def state_path(folder: Path, base_url: str, payload: bytes) -> Path:
    """Where the batch of these requests to this endpoint keeps its ids."""
    return folder / f"{hashlib.sha256(base_url.encode() + b'|' + payload).hexdigest()[:24]}.json"


def run_batch(client: Any, bodies: list[dict[str, Any]], folder: Path, base_url: str, window: str,
              poll_s: float, log: Callable[[str], None] = lambda s: None, retry_of: str = "") -> list[dict[str, Any]]:
    """Each request's outcome, in order: ``{"body": <chat completion>}`` or ``{"error": <text>}``.
    ``retry_of``: the batch whose failed requests these are (a different state file than theirs there)."""
    payload = request_lines(bodies)
    path = state_path(folder, base_url + (f"|retry-of:{retry_of}" if retry_of else ""), payload)
    state: dict[str, Any] = read_json(path) or {}
    attached = bool(state.get("batch_id"))
    folder.mkdir(parents=True, exist_ok=True)
    if not state.get("input_file_id"):
        uploaded = client.files.create(file=(f"realchat-{path.stem}.jsonl", payload), purpose="batch")
        state = {"input_file_id": uploaded.id, "requests": len(bodies)}
        write_json(path, state)
    if not state.get("batch_id"):
        batch = client.batches.create(input_file_id=state["input_file_id"], endpoint=ENDPOINT,
                                      completion_window=window, metadata={"realchat_requests": path.stem})
        state["batch_id"] = batch.id
        write_json(path, state)
        log(f"batch {batch.id} submitted ({len(bodies):,} requests); polling every {poll_s:g} s")
    else:
        log(f"batch {state['batch_id']}: re-attached (submitted by an earlier run; not paid again)")
    while True:
        batch = client.batches.retrieve(state["batch_id"])
        if batch.status in FINAL:
            break
        time.sleep(poll_s)
    results: dict[str, dict[str, Any]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            for line in client.files.content(file_id).text.splitlines():
                if line.strip():
                    item = json.loads(line)
                    results[item.get("custom_id", "")] = item
    if batch.status != "completed":
        path.unlink(missing_ok=True)  # nothing to re-attach to: the next run submits afresh
    why = _batch_errors(batch)
    out = []
    for i in range(len(bodies)):
        item = results.get(f"request-{i}")
        if item is None:
            out.append({"error": f"batch {batch.id} {batch.status}: no answer to this request{why}"})
            continue
        response, error = item.get("response") or {}, item.get("error")
        if error or response.get("status_code", 200) != 200:
            detail = error or (response.get("body") or {}).get("error") or response.get("body")
            out.append({"error": f"batch {batch.id}: HTTP {response.get('status_code', '?')}: {str(detail)[:300]}"})
        else:
            out.append({"body": response.get("body") or {}})
    failed = [i for i, o in enumerate(out) if "error" in o]
    if attached and batch.status == "completed" and failed:
        # an earlier run already saw these fail: ask them again (once per run) rather than fail again
        log(f"batch {batch.id}: {len(failed):,} of {len(bodies):,} requests failed in it; resubmitting them "
            "in a new batch")
        again = run_batch(client, [bodies[i] for i in failed], folder, base_url, window, poll_s, log, batch.id)
        for i, o in zip(failed, again):
            out[i] = o
    return out


def _batch_errors(batch: Any) -> str:
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    texts = [getattr(e, "message", None) or str(e) for e in errors][:3]
    return f" ({'; '.join(texts)})" if texts else ""
