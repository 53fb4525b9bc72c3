"""The token counter's memo, and ``split`` slicing its output with polars, on a real (tiny) tokenizer.

The memo must never change a count, must stay within its size, and must spare ``split`` the user
turns ``length`` already counted; ``split``'s vectorised slicing must give what slicing each row by
hand gives (system turns repeated, per-user-turn columns sliced, short or null ones kept short).
"""

from __future__ import annotations

import itertools

import polars as pl
import pytest

from realchat.curation.ops import REGISTRY
from realchat.curation.ops.split import plan_segments
from realchat.models import TokenCounter, load_tokenizer

from test_filters import conv, table  # the same tiny conversation builders

ANSWER = "The quick brown fox jumps over the lazy dog, then it naps in the sun. " * 6


@pytest.fixture
def counter(tiny_tokenizer_dir):
    """A fresh counter per test (``token_counter`` is cached per process, and so is its memo)."""
    c = TokenCounter(load_tokenizer(str(tiny_tokenizer_dir)))
    calls: list[list[str]] = []
    real = c._tokenize

    def recording(texts):
        calls.append(list(texts))
        return real(texts)

    c._tokenize = recording  # type: ignore[method-assign]
    c.calls = calls  # type: ignore[attr-defined]
    return c


def fresh_counts(tokenizer, texts):
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def test_memo_never_changes_a_count_and_tokenizes_each_text_once(counter):
    texts = ["Hello, how are you?", ANSWER, "Hello, how are you?", "", "naïve café ünïcödé"]
    first = counter.count(texts)
    assert first == fresh_counts(counter.tokenizer, texts)
    assert counter.calls == [["Hello, how are you?", ANSWER, "", "naïve café ünïcödé"]]  # repeat counted once
    assert counter.count(list(reversed(texts))) == list(reversed(first))
    assert len(counter.calls) == 1  # all looked up


def test_remember_false_looks_up_but_does_not_store(counter):
    counter.count(["seen before"])
    assert counter.count(["seen before", "new text"], remember=False) == fresh_counts(
        counter.tokenizer, ["seen before", "new text"])
    assert counter.calls[-1] == ["new text"]
    counter.count(["new text"])
    assert counter.calls[-1] == ["new text"]  # was not remembered, so tokenized again


def test_memo_stays_within_its_size(tiny_tokenizer_dir):
    c = TokenCounter(load_tokenizer(str(tiny_tokenizer_dir)), memo_chars=100)
    texts = [f"text number {i:04d}" for i in range(60)]  # 16 characters each
    assert c.count(texts) == fresh_counts(c.tokenizer, texts)
    held = sum(map(len, c._memo)) + sum(map(len, c._memo_old))
    assert 0 < held <= 100
    assert texts[-1] in c._memo and texts[0] not in c._memo and texts[0] not in c._memo_old
    assert c.count(texts) == fresh_counts(c.tokenizer, texts)  # evicted ones are simply counted again


def op(name, counter, **params):
    cls = REGISTRY[name]
    return cls(cls.Params(op=name, **params), lambda: counter)


def test_split_looks_up_the_user_turns_length_counted(counter):
    questions = [f"question {i}: how do foxes sleep in the sun?" for i in range(4)]
    t = table(conv(*[x for q in questions for x in ("u:" + q, "a:" + ANSWER)]),
              conv("u:short one", "a:short answer"))
    after_length = op("length", counter, max_tokens=500).apply(t).kept
    n_length_calls = len(counter.calls)
    assert counter.calls[0] == questions + ["short one"]
    res = op("split", counter, max_tokens=64).apply(after_length)
    split_texts = [x for call in counter.calls[n_length_calls:] for x in call]
    assert split_texts == [ANSWER]  # the long conversation's answers (one distinct text); no user turn
    # the same result as a counter that remembers nothing
    again = op("split", TokenCounter(counter.tokenizer, memo_chars=0), max_tokens=64).apply(after_length)
    assert res.kept.equals(again.kept) and res.rejected.equals(again.rejected)


def slice_by_hand(t: pl.DataFrame, c: TokenCounter, max_tokens: int):
    """What split keeps and rejects, row by row in plain Python (the rule, not the fast path)."""
    kept, rejected = [], []
    for row in t.to_dicts():
        msgs = row["messages"]
        counts = [n + c.turn_overhead for n in c.count([m["content"] for m in msgs])]
        n_sys = sum(1 for _ in itertools.takewhile(lambda m: m["role"] == "system", msgs))
        body = msgs[n_sys:]
        budget = max_tokens - c.base_overhead - sum(counts[:n_sys])
        segs, pieces = plan_segments([m["role"] for m in body], counts[n_sys:], budget, True)
        user_idx = [i for i, m in enumerate(body) if m["role"] == "user"]

        def user_values(idx):
            ords = [user_idx.index(i) for i in idx if i in user_idx]
            return {k: [(v or [])[o] for o in ords if o < len(v or [])] for k, v in row.items()
                    if k.startswith("user_")}

        for k, seg in enumerate(segs):
            kept.append({"messages": msgs[:n_sys] + [body[i] for i in seg], "segment": k, **user_values(seg)})
        for piece, why in pieces:
            rejected.append({"messages": [body[i] for i in piece], "detail": why,
                             "score": float(sum(counts[n_sys + i] for i in piece)), **user_values(piece)})
    return kept, rejected


def test_split_slices_system_turns_and_short_or_null_user_columns(counter):
    t = table(
        conv("s:be brief", "u:q one", "a:" + ANSWER, "u:q two", "a:" + ANSWER, "u:q three", "a:" + ANSWER, "u:dangling"),
        conv("u:tiny", "a:tiny answer"),
        conv("u:q one", "a:" + ANSWER * 4, "u:q two", "a:ok"),
    ).with_columns(
        pl.Series("user_chars", [[7, 7, 9, 8], [4], None], dtype=pl.List(pl.Int64)),
        pl.Series("user_lang", [["en", "en"], ["en"], ["en", "fr"]], dtype=pl.List(pl.String)),  # first row short
    )
    pair = sum(counter.count(["q three", ANSWER])) + 2 * counter.turn_overhead
    budget = counter.base_overhead + counter.count(["be brief"])[0] + counter.turn_overhead + pair + 10
    res = op("split", counter, max_tokens=budget).apply(t)
    kept, rejected = slice_by_hand(t, counter, budget)
    assert len(kept) > 3 and rejected  # the case is cut, and some pieces fit nowhere
    cols = ["messages", "segment", "user_chars", "user_lang"]
    assert res.kept.select(cols).to_dicts() == [{k: r[k] for k in cols} for r in kept]
    cols = ["messages", "detail", "score", "user_chars", "user_lang"]
    assert res.rejected.select(cols).to_dicts() == [{k: r[k] for k in cols} for r in rejected]
    assert res.rejected["segment"].to_list() == [-1] * len(rejected)
    assert res.kept.columns == t.columns + ["ends_conversation", "follows_unseen_answer"]
    assert res.rejected.columns == t.columns + ["ends_conversation", "follows_unseen_answer", "score", "detail"]


def test_split_of_an_empty_table_keeps_its_columns(counter):
    t = table().with_columns(pl.Series("user_chars", [], dtype=pl.List(pl.Int64)))
    res = op("split", counter).apply(t)
    assert res.kept.height == 0 and res.rejected.height == 0
    flags = {"ends_conversation": pl.Boolean, "follows_unseen_answer": pl.Boolean}
    assert res.kept.schema == t.schema | flags
    assert res.rejected.schema == t.schema | flags | {"score": pl.Float64, "detail": pl.String}
