"""FastChat's benchmark files (MT-Bench, Vicuna-Bench, the judge prompts), pinned, fetched once, cached.

No package on PyPI ships FastChat's ``llm_judge/data`` (``fschat``'s wheel leaves it out), so a recipe's
``benchmark.questions: fastchat`` means: the five files below, as FastChat's repository has them at
:data:`COMMIT`. They are downloaded over HTTPS the first time they are needed (``realchat plan`` or
``realchat fetch-eval``), each checked against the sha256 recorded here, and kept in the RealChat cache
(``$REALCHAT_CACHE/fastchat/<commit>/``, in FastChat's own layout), so later builds read them offline.

Offline, the same files can be put into the cache from a folder that has them (a FastChat clone's
``fastchat/llm_judge/data``, or a copy carried over): ``realchat fetch-eval --from DIR`` checks each
file against the same digests. A folder named directly in ``benchmark.questions`` is read as it is,
unchecked (another commit's files, or one's own benchmark in FastChat's layout).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from realchat.errors import RealChatError

#: The recipe value of ``benchmark.questions`` meaning "FastChat's files at :data:`COMMIT`".
FASTCHAT = "fastchat"
#: lm-sys/FastChat's commit the files are pinned to (its ``main`` on 2025-04-12; the data files last
#: changed in b494d0c and 7ad1d63).
COMMIT = "0e6d3e4beaab66f4d3f93db72541a4abab8af28d"
#: Where they are downloaded from; ``REALCHAT_FASTCHAT_URL`` replaces it (a mirror, or a test's server).
BASE_URL = f"https://raw.githubusercontent.com/lm-sys/FastChat/{COMMIT}/fastchat/llm_judge/data"
#: Each file (relative to ``llm_judge/data``) and its sha256 at :data:`COMMIT`.
FILES = {
    "judge_prompts.jsonl": "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6",
    "mt_bench/question.jsonl": "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
    "mt_bench/reference_answer/gpt-4.jsonl": "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f",
    "vicuna_bench/question.jsonl": "c248c5c98ba45bb0c2aadae2f270e643bd32679c6c306a3b2a503ac4254cdaa5",
    "vicuna_bench/reference_answer/gpt-4.jsonl": "f7542dc25a5a869b32197486f5699a14eb5682ab3c7264518402399ec09ab470",
}
#: Seconds to wait for the download host before calling it unreachable.
TIMEOUT_S = 30.0
#: How a user puts the files into the cache without network (said by every error here).
OFFLINE_HINT = ("online, `realchat fetch-eval` downloads them; offline, `realchat fetch-eval --from DIR` takes "
                "them from a folder that has FastChat's fastchat/llm_judge/data files, or point "
                "benchmark.questions at such a folder")


def base_url() -> str:
    return (os.environ.get("REALCHAT_FASTCHAT_URL") or BASE_URL).rstrip("/")


def cache_folder() -> Path:
    """The pinned files' folder in the RealChat cache (FastChat's layout; it may be incomplete)."""
    from realchat.models import cache_dir

    return cache_dir() / "fastchat" / COMMIT


def files_for(benchmarks: Iterable[str]) -> list[str]:
    """The files a pass over ``benchmarks`` reads: the judge prompts, each benchmark's questions and
    GPT-4 reference answers."""
    wanted = set(benchmarks)
    return [f for f in FILES if f == "judge_prompts.jsonl" or f.split("/")[0] in wanted]


def identity() -> str:
    """A digest of the pinned files' digests: what enters a step's fingerprint for ``fastchat``."""
    return hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(FILES.items())).encode()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("REALCHAT_OFFLINE", "HF_HUB_OFFLINE"))


def missing(benchmarks: Iterable[str]) -> list[str]:
    """The files of ``benchmarks`` the cache lacks or holds with the wrong content."""
    root = cache_folder()
    out = []
    for name in files_for(benchmarks):
        path = root / name
        if not path.is_file() or _sha256(path.read_bytes()) != FILES[name]:
            out.append(name)
    return out


def _download(name: str) -> bytes:
    url = f"{base_url()}/{name}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:  # noqa: S310 - https (or a test's http)
            return r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise RealChatError(f"cannot download FastChat's {name} from {url} ({reason})",
                            field="benchmark.questions", hint=OFFLINE_HINT) from None


def _store(name: str, data: bytes, origin: str) -> None:
    """Check ``data`` against the recorded digest, then write it into the cache whole or not at all."""
    from realchat.files import atomic_write_bytes

    if _sha256(data) != FILES[name]:
        raise RealChatError(f"{origin} is not FastChat's {name} at commit {COMMIT[:12]} (sha256 {_sha256(data)[:16]}…, "
                            f"expected {FILES[name][:16]}…); nothing was cached", field="benchmark.questions",
                            hint="to use other files as they are, point benchmark.questions at their folder")
    path = cache_folder() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def fetch(benchmarks: Iterable[str] = ("mt_bench", "vicuna_bench"), source: Path | None = None) -> Path:
    """Put the files of ``benchmarks`` into the cache (from ``source``, a folder in FastChat's layout,
    or downloaded) unless they are there already; return the cache folder. Raises one
    :class:`RealChatError` naming the file and what to do."""
    todo = missing(benchmarks)
    for name in todo:
        if source is not None:
            path = source / name
            if not path.is_file():
                raise RealChatError("not found: --from needs FastChat's llm_judge/data layout",
                                    file=str(path), hint=f"the files: {', '.join(files_for(benchmarks))}")
            _store(name, path.read_bytes(), str(path))
        elif _offline():
            raise RealChatError(f"FastChat's {name} is not in the cache ({cache_folder()}) and the network is off "
                                "(REALCHAT_OFFLINE / HF_HUB_OFFLINE)", field="benchmark.questions", hint=OFFLINE_HINT)
        else:
            _store(name, _download(name), f"{base_url()}/{name}")
    return cache_folder()

