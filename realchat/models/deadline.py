"""A total deadline for each request RealChat sends to an OpenAI-compatible server.

The ``openai`` client's timeouts are httpx's: a read timeout bounds the wait for *each* chunk of the
answer, not the answer, so a server (or a proxy) that sends a byte every few seconds holds a request
for ever under any read timeout (a sweep saw 400 s and more with ``timeout_s: 10``). The client below
is the ``openai`` package's own default HTTP client with one change: a request whose answer is read
whole (every request RealChat sends: none streams) must be complete, connection to last byte, within
the deadline, else it fails as an httpx timeout, which the ``openai`` client treats as it treats any
timeout: retried while retries are left (each attempt with a deadline of its own), then
``APITimeoutError``.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any


@functools.cache
def _client_class() -> type:
    """The ``openai`` package's default async HTTP client (httpx or httpx2, whichever that version
    uses) with a deadline on every whole-answer request."""
    from openai import DefaultAsyncHttpxClient

    base = next(c for c in DefaultAsyncHttpxClient.__mro__ if c.__name__ == "AsyncClient")
    httpx = sys.modules[base.__module__.partition(".")[0]]

    class DeadlineClient(DefaultAsyncHttpxClient):  # type: ignore[misc, valid-type]
        deadline_s: float

        async def send(self, request: Any, *, stream: bool = False, **kwargs: Any) -> Any:
            if stream:  # the caller reads the body itself, when it likes: nothing to bound here
                return await super().send(request, stream=True, **kwargs)
            try:
                return await asyncio.wait_for(super().send(request, stream=False, **kwargs), self.deadline_s)
            except asyncio.TimeoutError:
                raise httpx.ReadTimeout(f"no complete answer within {self.deadline_s:g} s",
                                        request=request) from None

    return DeadlineClient


def deadline_client(deadline_s: float, **kwargs: Any) -> Any:
    """An HTTP client for ``AsyncOpenAI(http_client=...)``: ``kwargs`` as the ``openai`` package's
    default client takes them (``timeout``), and a total deadline of ``deadline_s`` per request."""
    client = _client_class()(**kwargs)
    client.deadline_s = deadline_s
    return client
