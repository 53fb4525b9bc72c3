"""Timeouts on every request RealChat makes to a Hub (publishing, lineage, Hub sources and models).

``huggingface_hub`` builds its shared HTTP client with no timeout, and most ``HfApi`` calls
(``whoami``, ``repo_info``, ``create_commit`` …) pass ``timeout=None``: an endpoint that accepts
the connection and never answers blocks for ever. RealChat installs the library's own client with
one extra request hook that fills in a connect and a read timeout wherever a call left them unset
(a call's own timeout, such as the ETag check's ``HF_HUB_ETAG_TIMEOUT``, is kept).

``REALCHAT_HUB_CONNECT_TIMEOUT`` (seconds, default 10) bounds connecting, ``REALCHAT_HUB_TIMEOUT``
(default 120) waiting for each answer; downloads also follow ``HF_HUB_DOWNLOAD_TIMEOUT`` and
``HF_HUB_ETAG_TIMEOUT`` as ``huggingface_hub`` documents them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from realchat.errors import RealChatError

CONNECT_ENV = "REALCHAT_HUB_CONNECT_TIMEOUT"
READ_ENV = "REALCHAT_HUB_TIMEOUT"
DEFAULT_CONNECT_S = 10.0
DEFAULT_READ_S = 120.0


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise RealChatError(f"{env}={raw!r}: expected a number of seconds above 0")
    return value


def timeouts() -> Timeouts:
    """The connect and read timeouts from the environment (defaults 10 s and 120 s)."""
    return Timeouts(_seconds(CONNECT_ENV, DEFAULT_CONNECT_S), _seconds(READ_ENV, DEFAULT_READ_S))


_installed: Timeouts | None = None


def install_timeouts() -> Timeouts:
    """Give ``huggingface_hub``'s shared client default timeouts (again if the environment changed)."""
    global _installed
    t = timeouts()
    if t == _installed:
        return t
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    def fill(request) -> None:  # type: ignore[no-untyped-def]
        given = dict(request.extensions.get("timeout") or {})
        fallback = {"connect": t.connect, "read": t.read, "write": t.read, "pool": t.read}
        request.extensions["timeout"] = {k: given.get(k) if given.get(k) is not None else v
                                         for k, v in fallback.items()}

    def factory():  # type: ignore[no-untyped-def]
        client = default_client_factory()
        client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks.get("request", []), fill]}
        return client

    set_client_factory(factory)
    _installed = t
    return t


def is_timeout(e: BaseException) -> str | None:
    """``connect`` or ``read`` when ``e`` is a transport timeout (httpx, requests), else None."""
    name = type(e).__name__.lower()
    if "timeout" not in name and not isinstance(e, TimeoutError):
        return None
    return "connect" if "connect" in name else "read"
