"""clean_html: convert turns that are HTML (saved from the ChatGPT web UI) to markdown.

Why only some turns: ShareGPT assistant turns were scraped as rendered HTML, but many turns *contain*
HTML as code (JSX, templates). Converting those would destroy the code, so by default a turn is
converted only when it starts with a block-level tag. markdownify does the conversion; its escaping of
``_`` and ``*`` is switched off because those are literal in code and math.
"""

from __future__ import annotations

import re
from typing import Literal

import polars as pl

from realchat.curation.ops._text import rewrite_contents
from realchat.curation.ops.base import Filter, OpParams, OpResult

_BLOCK_START_RUST = r"(?i)\A\s*<(div|p|pre|ol|ul|table|h[1-6]|blockquote)[\s>]"


class Params(OpParams):
    op: Literal["clean_html"] = "clean_html"
    #: Roles whose turns are converted from HTML to markdown.
    roles: list[str] = ["user", "assistant"]
    #: Convert only turns whose text starts with a block-level HTML tag (safe for code in turns).
    only_html_turns: bool = True


class CleanHtml(Filter):
    Params = Params

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        from markdownify import markdownify  # here: bs4 behind it costs 0.13 s of every command's start

        def convert(text: str) -> str:
            md = markdownify(
                text,
                heading_style="ATX",
                code_language="",
                escape_asterisks=False,
                escape_underscores=False,
                escape_misc=False,
            )
            return re.sub(r"\n{3,}", "\n\n", md).strip()

        candidates = (
            pl.col("content").str.contains(_BLOCK_START_RUST) if p.only_html_turns
            else pl.col("content").str.contains(r"<[A-Za-z]")
        )
        new, changed = rewrite_contents(table, None, p.roles, python_fn=convert, candidates=candidates)
        return OpResult(kept=new, counters={"turns_converted": changed})
