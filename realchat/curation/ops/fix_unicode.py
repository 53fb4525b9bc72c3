"""fix_unicode: repair mojibake and stray control characters in turns (ftfy).

Logs that went through a wrong encoding carry ``doesnâ€™t`` for ``doesn't`` and ``cafÃ©`` for
``café``; a user simulator would learn to write them. ftfy (Robyn Speer's "fixes text for you")
detects and undoes such double encodings, and removes terminal escapes and control characters.

Only repairs are switched on: curly quotes, full-width characters, ligatures, line breaks, HTML
entities (``&lt;`` in code) and Unicode normalisation are left as written, because they are what the
user typed, not damage. A vectorised test picks the turns that hold any character where damage can
hide (C0/C1 controls, Latin-1 range, U+FFFD); the others never reach Python.
"""

from __future__ import annotations

from typing import Literal

from realchat.curation.ops._text import rewrite_contents
from realchat.curation.ops.base import Filter, OpParams, OpResult

_SUSPECT = "[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\xff\\ufffd]"
#: ftfy's settings (its import, 0.12 s, waits for the op's first use: every command imports the ops)
_CONFIG = dict(
    unescape_html=False, fix_latin_ligatures=False, fix_character_width=False, uncurl_quotes=False,
    fix_line_breaks=False, normalization=None, explain=False,
)


class Params(OpParams):
    op: Literal["fix_unicode"] = "fix_unicode"
    #: Turns of these roles are repaired (all of them by default).
    roles: list[Literal["user", "assistant", "system"]] = ["user", "assistant", "system"]


class FixUnicode(Filter):
    Params = Params

    def apply(self, table):  # type: ignore[no-untyped-def]
        p: Params = self.params  # type: ignore[assignment]
        import polars as pl
        from ftfy import TextFixerConfig, fix_text

        config = TextFixerConfig(**_CONFIG)
        new, changed = rewrite_contents(table, None, p.roles, python_fn=lambda t: fix_text(t, config),
                                        candidates=pl.col("content").str.contains(_SUSPECT))
        return OpResult(kept=new, counters={"turns_fixed": changed})
