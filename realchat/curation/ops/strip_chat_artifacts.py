"""strip_chat_artifacts: remove text the ChatGPT web UI injected into copied conversations.

The paper's clean-up removed the "Copy code" button label, the leading "N / N" regenerate-counter
that prefixes a regenerated answer, and the "CopyN chars / N words" counter. These are not language
either speaker produced, and a simulator trained on them would learn to emit them.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from realchat.curation.ops._text import rewrite_contents
from realchat.curation.ops.base import Filter, OpParams, OpResult

# Rust-regex patterns (polars): no look-around, so the character before "Copy code" is captured.
_COPY_CODE_INLINE = r"(\S)Copy code"          # "```pythonCopy code" -> "```python"
_COPY_CODE_LINE = r"(?m)^[ \t]*Copy code[ \t]*\n?"
_COPY_COUNTER = r"Copy\d+ chars / \d+ words"
_REGEN_COUNTER = r"\A\s*\d+\s*/\s*\d+[ \t]*\n?\s*"


class Params(OpParams):
    op: Literal["strip_chat_artifacts"] = "strip_chat_artifacts"
    #: Roles whose turns are cleaned.
    roles: list[str] = ["user", "assistant"]
    #: Remove the web UI's "Copy code" button label.
    copy_code: bool = True
    #: Remove the "CopyN chars / N words" counter.
    copy_counter: bool = True
    #: Remove the leading "N / N" regenerate counter of a regenerated answer.
    regenerate_counter: bool = True


def strip_artifacts(content: pl.Expr, p: Params) -> pl.Expr:
    if p.copy_counter:
        content = content.str.replace_all(_COPY_COUNTER, "")
    if p.copy_code:
        content = content.str.replace_all(_COPY_CODE_INLINE, "${1}").str.replace_all(_COPY_CODE_LINE, "")
    if p.regenerate_counter:
        # only when text follows: a turn that is just "2 / 2" is not a counter
        content = pl.when(content.str.contains(_REGEN_COUNTER + r"\S")).then(
            content.str.replace(_REGEN_COUNTER, "")).otherwise(content)
    return content


class StripChatArtifacts(Filter):
    Params = Params

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        new, changed = rewrite_contents(table, lambda c: strip_artifacts(c, p), p.roles)
        return OpResult(kept=new, counters={"turns_cleaned": changed})
