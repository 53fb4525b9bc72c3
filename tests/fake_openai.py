"""A fake OpenAI endpoint on 127.0.0.1 for the token, cost and Batch API tests: a real HTTP server the
``openai`` client talks to as it talks to OpenAI.

* ``POST /v1/completions`` and ``POST /v1/chat/completions`` answer at once, deterministically: the text
  is a digest of the model name and the request's prompt or messages (so a rerun asks and gets the
  very same), and the ``usage`` it reports (prompt tokens = words of the prompt, completion tokens =
  words of the answer) is added to the server's own tallies, which the tests compare with RealChat's.
  A request carrying FastChat's judge instructions gets a verdict FastChat parses: ``Rating: [[n]]``
  (n in 1-10, from the digest) for single grading, ``[[A]]`` or ``[[B]]`` for pairwise.
* The Batch API: ``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}/content``,
  ``POST /v1/batches``, ``GET /v1/batches/{id}``. A batch stays ``in_progress`` while ``hold`` is set
  and for ``polls_to_finish`` retrievals, then completes: each request line is answered as
  ``/v1/chat/completions`` would answer it, into an output file, except the lines whose messages
  contain ``fail_marker``: those get an error line in the batch's error file (as OpenAI reports a
  failed request of a completed batch). Creations and retrievals are counted per batch.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(self, polls_to_finish: int = 3) -> None:
        self.polls_to_finish = polls_to_finish
        self.lock = threading.Lock()
        self.usage: Counter[str] = Counter()  # "<endpoint>:prompt" / ":completion" / ":calls"
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []  # batch ids in creation order
        self.retrieved: Counter[str] = Counter()
        #: While set, no batch completes (a test kills its client while the batch is surely pending).
        self.hold = threading.Event()
        #: A batch request whose messages contain this text fails (an error line; None: none fails).
        self.fail_marker: str | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def uploads(self) -> list[bytes]:
        """The batch input files uploaded, in order (the server's own output and error files left out)."""
        with self.lock:
            return [v for k, v in self.files.items() if not k.startswith(("file-out", "file-err"))]

    # -- answers ----------------------------------------------------------------------------------

    def answer(self, endpoint: str, body: dict[str, Any], count: bool = True) -> dict[str, Any]:
        """One completion, deterministic in the request's content, with its usage."""
        if endpoint.endswith("chat/completions"):
            seen = " ".join(m["content"] for m in body["messages"])
        else:
            prompt = body["prompt"]
            seen = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        digest = hashlib.sha256(f"{body.get('model')}|{seen}".encode()).hexdigest()
        words = ["item", digest[:6], "about", digest[6:12], "please"][: max(1, min(5, body.get("max_tokens") or 5))]
        if '"[[A]]" if assistant A is better' in seen:  # FastChat's pairwise judge prompts
            words = ["verdict", digest[:6], "[[A]]" if int(digest[6], 16) % 2 else "[[B]]"]
        elif '"[[rating]]"' in seen:  # FastChat's single-grading judge prompts
            words = ["verdict", digest[:6], "Rating:", f"[[{1 + int(digest[6:8], 16) % 10}]]"]
        text = " ".join(words)
        usage = {"prompt_tokens": len(seen.split()), "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if count:
            with self.lock:
                self.usage[f"{endpoint}:prompt"] += usage["prompt_tokens"]
                self.usage[f"{endpoint}:completion"] += usage["completion_tokens"]
                self.usage[f"{endpoint}:calls"] += 1
        finish = "length" if len(words) >= (body.get("max_tokens") or 5) else "stop"
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                  if endpoint.endswith("chat/completions") else {"index": 0, "text": text, "finish_reason": finish})
        return {"id": "cmpl-" + digest[:8], "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": [choice], "usage": usage}

    # -- the Batch API ----------------------------------------------------------------------------

    def _batch_view(self, batch_id: str) -> dict[str, Any]:
        with self.lock:
            b = self.batches[batch_id]
            self.retrieved[batch_id] += 1
            if (b["status"] == "in_progress" and self.retrieved[batch_id] >= self.polls_to_finish
                    and not self.hold.is_set()):
                lines, errors = [], []
                for line in self.files[b["input_file_id"]].decode().splitlines():
                    req = json.loads(line)
                    if self.fail_marker and any(self.fail_marker in m["content"] for m in req["body"]["messages"]):
                        errors.append(json.dumps({"id": "r", "custom_id": req["custom_id"], "response": {
                            "status_code": 500, "request_id": "x",
                            "body": {"error": {"message": "the server had an error", "type": "server_error"}}},
                            "error": None}))
                        continue
                    body = self.answer(req["url"], req["body"], count=False)
                    lines.append(json.dumps({"id": "r", "custom_id": req["custom_id"], "error": None, "response": {
                        "status_code": 200, "request_id": "x", "body": body}}))
                    self.usage["batch:prompt"] += body["usage"]["prompt_tokens"]
                    self.usage["batch:completion"] += body["usage"]["completion_tokens"]
                    self.usage["batch:calls"] += 1
                out_id = f"file-out-{batch_id}"
                self.files[out_id] = ("\n".join(reversed(lines)) + "\n").encode()  # any order: matched by custom_id
                b.update(status="completed", output_file_id=out_id, completed_at=int(time.time()),
                         request_counts={"total": len(lines) + len(errors), "completed": len(lines),
                                         "failed": len(errors)})
                if errors:
                    self.files[f"file-err-{batch_id}"] = ("\n".join(errors) + "\n").encode()
                    b["error_file_id"] = f"file-err-{batch_id}"
            return dict(b)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, data: Any, status: int = 200, raw: bytes | None = None) -> None:
                body = raw if raw is not None else json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                raw = self._body()
                if path in ("/v1/completions", "/v1/chat/completions"):
                    return self._send(fake.answer(path, json.loads(raw)))
                if path == "/v1/files":
                    msg = BytesParser(policy=email_policy).parsebytes(
                        f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + raw)
                    fields = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True)
                              for p in msg.iter_parts()}
                    with fake.lock:
                        file_id = f"file-{len(fake.files):04d}"
                        fake.files[file_id] = fields["file"]
                    return self._send({"id": file_id, "object": "file", "bytes": len(fields["file"]), "created_at": 0,
                                       "filename": "input.jsonl", "purpose": fields["purpose"].decode()})
                if path == "/v1/batches":
                    req = json.loads(raw)
                    with fake.lock:
                        batch_id = f"batch-{len(fake.batches):04d}"
                        fake.created.append(batch_id)
                        fake.batches[batch_id] = {
                            "id": batch_id, "object": "batch", "endpoint": req["endpoint"], "errors": None,
                            "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
                            "status": "in_progress", "output_file_id": None, "error_file_id": None,
                            "created_at": int(time.time()), "metadata": req.get("metadata")}
                        view = dict(fake.batches[batch_id])
                    return self._send(view)
                self._send({"error": {"message": f"no route {path}"}}, 404)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                parts = path.strip("/").split("/")
                if len(parts) == 3 and parts[1] == "batches" and parts[2] in fake.batches:
                    return self._send(fake._batch_view(parts[2]))
                if len(parts) == 4 and parts[1] == "files" and parts[3] == "content" and parts[2] in fake.files:
                    return self._send(None, raw=fake.files[parts[2]])
                self._send({"error": {"message": f"no route {path}"}}, 404)

        return Handler


if __name__ == "__main__":  # a server for a subprocess test: prints its URL, serves until killed
    import sys

    with FakeOpenAI(polls_to_finish=int(sys.argv[1]) if len(sys.argv) > 1 else 3) as f:
        print(f.base_url, flush=True)
        threading.Event().wait()
