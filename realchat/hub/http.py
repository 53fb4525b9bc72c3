"""Timeouts on every request RealChat makes to a Hub (publishing, lineage, Hub sources and models).

``huggingface_hub`` builds its shared HTTP client with no timeout, and most ``HfApi`` calls
(``whoami``, ``repo_info``, ``create_commit`` …) pass ``timeout=None``: an endpoint that accepts
the connection and never answers blocks for ever. RealChat installs the library's own client with
one extra request hook that fills in a connect and a read timeout wherever a call left them unset,
and caps a call's own (a shorter one, such as the ETag check's ``HF_HUB_ETAG_TIMEOUT``, is kept).

``hf_hub_download`` retries a silent endpoint five more times with a 60 s ETag timeout of its own
(minutes) before it gives up; RealChat's own reads of cards and manifests therefore go through
:func:`get_text` (one request, these timeouts, no retries), and :func:`check_answers` asks an
endpoint once, quickly, before lineage reading hands it to ``hf_hub_download`` (an endpoint that
cannot be reached fails there, in one line, instead of after the library's retries).

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
        cap = {"connect": t.connect, "read": t.read, "write": t.read, "pool": t.read}
        request.extensions["timeout"] = {k: min(given[k], v) if given.get(k) is not None else v
                                         for k, v in cap.items()}

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


class HubSilentError(RealChatError):
    """A Hub endpoint accepted the connection and sent no answer within the read timeout (or could not
    be connected to within the connect timeout)."""


def _silent(e: BaseException, url: str, what: str) -> RealChatError | None:
    t = timeouts()
    kind = is_timeout(e)
    if kind == "read":
        return HubSilentError(f"{what}: {url} accepted the connection but sent no answer within {t.read:g} s",
                              hint="check the endpoint (publish.endpoint / HF_ENDPOINT); "
                              f"{READ_ENV} sets how long to wait")
    if kind == "connect":
        return HubSilentError(f"{what}: could not connect to {url} within {t.connect:g} s",
                              hint=f"check the network and the endpoint; {CONNECT_ENV} sets how long to wait")
    return None


def get_text(url: str, what: str, token: str | None = None) -> str:
    """One GET through ``huggingface_hub``'s client (its auth headers, these timeouts), no retries.
    Timeouts become :class:`HubSilentError`; HTTP errors are raised as ``huggingface_hub`` raises them."""
    from huggingface_hub import get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    install_timeouts()
    try:
        r = get_session().get(url, headers=build_hf_headers(token=token), follow_redirects=True)
    except Exception as e:
        err = _silent(e, url, what)
        if err is not None:
            raise err from None
        raise
    hf_raise_for_status(r)
    return r.text


_answered: set[str] = set()


class HubUnreachableError(RealChatError):
    """A Hub endpoint refused the connection, dropped it, or its name did not resolve."""


def check_answers(endpoint: str, what: str) -> None:
    """Ask ``endpoint`` once (per process) for anything; an answer of any status is enough. A silent
    endpoint is a one-line :class:`HubSilentError`, one that cannot be reached (refused, dropped, DNS)
    a one-line :class:`HubUnreachableError`, instead of ``hf_hub_download``'s retries with backoff
    further down (about 50 s before it gives up). With ``HF_HUB_OFFLINE`` nothing is asked: the
    library reads its cache only."""
    from huggingface_hub import constants

    if endpoint in _answered or constants.HF_HUB_OFFLINE:
        return
    from huggingface_hub import get_session

    install_timeouts()
    try:
        get_session().get(f"{endpoint.rstrip('/')}/api/whoami-v2", follow_redirects=False)
    except Exception as e:
        err = _silent(e, endpoint, what)
        if err is not None:
            raise err from None
        detail = str(e).splitlines()[0][:160] if str(e) else ""
        raise HubUnreachableError(f"{what}: cannot reach {endpoint} ({type(e).__name__}{': ' + detail if detail else ''})",
                                  hint="check the network and HF_ENDPOINT; HF_HUB_OFFLINE=1 reads the local "
                                  "Hub cache only") from None
    _answered.add(endpoint)
