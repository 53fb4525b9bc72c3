"""Exact token counts of a byte-level BPE tokenizer, counted pre-token by pre-token, for ASCII text.

Why: the curate step counts the tokens of every user turn (``length`` writes them) and of every turn
of the conversations ``split`` cannot prove short, about 84 MB of text for the shipped ShareGPT, and
``tokenizers``' ``encode_batch_fast`` does about 3 MB/s per core on it. Most of that is work whose
answer is already known: the same words come back again and again.

Why it is exact: for a tokenizer whose ``tokenizer.json`` has no normalizer, a ``ByteLevel``
pre-tokenizer with its GPT-2 regex (``use_regex: true``, no prefix space) and a plain ``BPE`` model,
``tokenizers`` cuts a text into pre-tokens with that regex, maps each pre-token's bytes to the
byte-level alphabet, and runs BPE on each pre-token alone; the token count of the text is the sum of
its pre-tokens' counts. Here the same regex cuts the text (Python's ``re``, with the character classes
spelt out for ASCII, where ``\\p{L}`` is ``[A-Za-z]``, ``\\p{N}`` is ``[0-9]`` and Oniguruma's ``\\s``
is tab, line feed, vertical tab, form feed, carriage return and space), and each distinct pre-token is
run once through the tokenizer's own BPE model (``model.tokenize``) and remembered. A text that is
not all ASCII is cut where no pre-token can cross (:data:`_CUT`): its ASCII stretches are counted that
way, and only its pieces that hold a non-ASCII character go to the tokenizer (Unicode classes differ
between regex engines' versions, so those are never cut here). A text that holds an added token's
content (``<|im_end|>`` in a pasted prompt is one token) is left to the tokenizer whole.
Any other tokenizer layout is not counted here at all. ``tests/test_curate_speed.py`` compares the
counts with ``encode`` on the shipped conversations and on random strings of the awkward characters.
"""

from __future__ import annotations

import json
import re
from typing import Any

_WS = "\\t\\n\\x0b\\x0c\\r "
#: The GPT-2 pre-tokenizer regex of ``tokenizers``' ByteLevel, for ASCII text.
_ASCII_GPT2 = re.compile(
    rf"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
)
#: Where a text may be cut for counting (between an ASCII non-space character and ASCII whitespace):
#: no pre-token crosses such a cut, since every alternative of the regex that takes a non-space
#: character stops before whitespace, and every whitespace alternative starts at whitespace; and the
#: regex cuts what follows as it would cut it alone (it looks behind nothing, and its look-ahead
#: after whitespace never reaches past the next non-space character). So the count of a text is the
#: sum of the counts of its pieces, whatever characters they hold.
_CUT = re.compile(r"(?<=[!-~])(?=[\t\n\x0b\x0c\r ])")
#: Distinct pre-tokens remembered at most (then forgotten at once): ~100 MB of dict at worst.
_MEMO_WORDS = 1_000_000


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters (what ByteLevel feeds the BPE model)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


_ASCII_TO_BYTE_LEVEL = {b: c for b, c in _byte_level_alphabet().items() if b < 128}


class PreTokenCounter:
    """Token counts by pre-token for the ASCII texts a byte-level BPE tokenizer would count the same way."""

    def __init__(self, model: Any, added: list[str], backend: Any = None) -> None:
        self.model = model
        self.added = [a for a in added if a]
        self.backend = backend  # the tokenizer itself, for the non-ASCII pieces of a text
        self.memo: dict[str, int] = {}
        self.unicode_memo: dict[str, int] = {}  # non-ASCII piece -> the tokenizer's count of it

    @classmethod
    def of(cls, backend: Any) -> "PreTokenCounter | None":
        """The counter for a ``tokenizers.Tokenizer``, or None when its layout is not the one whose
        counts this module can prove (see the module docstring)."""
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # noqa: BLE001 - not a tokenizers.Tokenizer: nothing to prove with
            return None
        pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
        if (spec.get("normalizer") is not None
                or pre.get("type") != "ByteLevel" or pre.get("use_regex", True) is not True
                or pre.get("add_prefix_space") is not False
                or model.get("type") != "BPE" or model.get("dropout") not in (None, 0.0)
                or model.get("continuing_subword_prefix") not in (None, "")
                or model.get("end_of_word_suffix") not in (None, "")):
            return None
        return cls(backend.model, [t.get("content", "") for t in spec.get("added_tokens") or []], backend)

    def count(self, texts: list[str]) -> list[int | None]:
        """Each text's token count (no special tokens added), or None where the tokenizer must count."""
        memo, findall, out = self.memo, _ASCII_GPT2.findall, []
        mixed: list[int] = []  # texts with non-ASCII characters: counted piece by piece below
        for text in texts:
            if any(a in text for a in self.added):
                out.append(None)
                continue
            if not text.isascii():
                mixed.append(len(out))
                out.append(None)
                continue
            words = findall(text)
            try:
                out.append(sum(map(memo.__getitem__, words)))
            except KeyError:
                out.append(self._learn(words))
        if mixed and self.backend is not None:
            self._count_mixed([texts[i] for i in mixed], mixed, out)
        return out

    def _count_mixed(self, texts: list[str], where: list[int], out: list[int | None]) -> None:
        """Texts that are not all ASCII, cut at :data:`_CUT`: the ASCII stretches counted here, each
        distinct piece holding a non-ASCII character by the tokenizer (in one batch). On ShareGPT most
        such texts are English with a curly quote or an emoji: 10.5 M characters become 0.26 M for
        the tokenizer."""
        if len(self.unicode_memo) > _MEMO_WORDS:
            self.unicode_memo.clear()
        unicode_memo = self.unicode_memo
        plans: list[list[str | int]] = []  # per text: ASCII counts and non-ASCII pieces, in order
        todo: dict[str, None] = {}
        for text in texts:
            plan: list[str | int] = []
            stretch: list[str] = []
            for piece in _CUT.split(text):
                if piece.isascii():
                    stretch.append(piece)
                    continue
                if stretch:
                    plan.append(self._ascii("".join(stretch)))
                    stretch = []
                plan.append(piece)
                if piece not in unicode_memo:
                    todo[piece] = None
            if stretch:
                plan.append(self._ascii("".join(stretch)))
            plans.append(plan)
        if todo:
            pieces = list(todo)
            unicode_memo.update(zip(pieces, map(len, self.backend.encode_batch_fast(pieces, add_special_tokens=False))))
        for i, plan in zip(where, plans):
            out[i] = sum(unicode_memo[p] if isinstance(p, str) else p for p in plan)

    def _ascii(self, text: str) -> int:
        words = _ASCII_GPT2.findall(text)
        try:
            return sum(map(self.memo.__getitem__, words))
        except KeyError:
            return self._learn(words)

    def _learn(self, words: list[str]) -> int:
        """Run BPE on the pre-tokens not yet known, then count."""
        if len(self.memo) > _MEMO_WORDS:
            self.memo.clear()
        memo, tokenize = self.memo, self.model.tokenize
        for w in words:
            if w not in memo:
                memo[w] = len(tokenize(w.translate(_ASCII_TO_BYTE_LEVEL)))
        return sum(map(memo.__getitem__, words))
