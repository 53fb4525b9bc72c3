"""Each curation op on small hand-made tables, with expected values worked out by hand."""

from __future__ import annotations

import polars as pl
import pytest

from realchat.curation.ops import REGISTRY
from realchat.curation.ops.split import plan_segments
from realchat.models import token_counter
from realchat.steps.curate import BASE_SCHEMA


def conv(*turns, cid=None):
    msgs = []
    for t in turns:
        role, _, content = t.partition(":")
        msgs.append({"role": {"u": "user", "a": "assistant", "s": "system"}[role], "content": content})
    return msgs


def table(*conversations):
    rows = [{"conversation_id": f"c{i}", "source_index": i, "segment": 0, "messages": m}
            for i, m in enumerate(conversations)]
    return pl.DataFrame(rows, schema=BASE_SCHEMA)


@pytest.fixture
def tokens(tiny_tokenizer_dir):
    """The step's token counter as an op gets it: a callable, loaded on first use."""
    loaded = []

    def get():
        if not loaded:
            loaded.append(token_counter(str(tiny_tokenizer_dir)))
        return loaded[0]

    return get


def run(tokens, op, tbl, **params):
    cls = REGISTRY[op]
    instance = cls(cls.Params(op=op, **params), tokens)
    result = instance.apply(tbl)
    result.counters.update(instance.totals())  # as the executors do after the last chunk
    return result


def test_clean_html_converts_html_turns_and_leaves_code_alone(tokens):
    html = "<div><p>Use <strong>bold</strong> text:</p><ol><li>one</li><li>two</li></ol></div>"
    jsx = "Fix this:\nreturn (<div className=\"a\">{x_y}</div>);"
    res = run(tokens, "clean_html", table(conv("u:" + jsx, "a:" + html)))
    user, assistant = res.kept["messages"][0]
    assert user["content"] == jsx
    assert assistant["content"] == "Use **bold** text:\n\n1. one\n2. two"
    assert res.counters == {"turns_converted": 1}


def test_strip_chat_artifacts(tokens):
    a = "2 / 2\nHere is code:\n```pythonCopy code\nprint(1)\n```\nCopy code\nCopy12 chars / 3 words"
    res = run(tokens, "strip_chat_artifacts", table(conv("u:1 / 2", "a:" + a)))
    user, assistant = res.kept["messages"][0]
    assert user["content"] == "1 / 2"  # a turn that is only "N / N" is kept as written
    assert assistant["content"] == "Here is code:\n```python\nprint(1)\n```\n"
    assert res.counters["turns_cleaned"] == 1


def test_vendor_mention_checks_assistant_turns_by_default(tokens):
    t = table(conv("u:What is ChatGPT?", "a:A chatbot."), conv("u:hi", "a:As ChatGPT, I cannot."))
    res = run(tokens, "vendor_mention", t)
    assert res.kept["conversation_id"].to_list() == ["c0"]
    assert res.rejected["detail"].to_list() == ["turn 1 (assistant): 'ChatGPT'"]
    res = run(tokens, "vendor_mention", t, roles=["user", "assistant"])
    assert res.kept.height == 0


def test_shape_trims_leading_assistant_and_rejects_bad_structure(tokens):
    t = table(
        conv("s:sys", "a:tail of an earlier piece", "u:q", "a:r"),  # trimmed, kept
        conv("u:q", "u:q2", "a:r"),                                  # not alternating
        conv(),                                                      # empty
        conv("u:q", "a:"),                                           # empty turn
    )
    res = run(tokens, "shape", t)
    assert res.kept["messages"].to_list() == [conv("s:sys", "u:q", "a:r")]
    assert res.counters["leading_assistant_turns_trimmed"] == 1
    assert res.rejected["detail"].to_list() == [
        "two user turns in a row at position 1", "0 user turns < min_user_turns=1",
        "empty assistant turn at position 1"]
    res = run(tokens, "shape", table(conv("a:x", "u:q", "a:r")), leading_assistant="reject")
    assert res.kept.height == 0


def test_language_with_fasttext(tokens):
    en = "Could you explain how photosynthesis works in simple terms for a child?"
    fr = "Pouvez-vous m'expliquer comment fonctionne la photosynthèse pour un enfant ?"
    t = table(conv("u:" + en, "a:x"), conv("u:" + fr, "a:x"), conv("u:ok", "a:x"),
              conv("u:" + en, "a:x", "u:" + fr, "a:y"))
    res = run(tokens, "language", t, allowed=["en"])
    assert res.kept["conversation_id"].to_list() == ["c0", "c2"]  # "ok" is too short to judge
    langs = dict(zip(res.kept["conversation_id"], res.kept["user_lang"].to_list()))
    assert langs["c0"] == ["en"]
    rej = dict(zip(res.rejected["conversation_id"], res.rejected["score"]))
    assert rej == {"c1": 0.0, "c3": 0.5}
    res = run(tokens, "language", t, allowed=["en"], policy="share", min_share=0.5)
    assert res.kept["conversation_id"].to_list() == ["c0", "c2", "c3"]


def test_language_low_confidence_turns(tokens):
    code = "kubectl get pods -n kube-system --field-selector=status.phase!=Running"
    t = table(conv("u:" + code, "a:x"))
    res = run(tokens, "language", t, allowed=["en"], min_confidence=0.99)
    assert res.kept.height == 1  # unsure: not judged
    res = run(tokens, "language", t, allowed=["en"], min_confidence=0.99, low_confidence="fail")
    assert res.kept.height == 0


def test_length_in_chars_and_tokens(tokens):
    huge = "word " * 1_000_000  # a 5 MB turn
    t = table(conv("u:hello", "a:x"), conv("u:" + huge, "a:x"), conv("u:hi", "a:x"))
    res = run(tokens, "length", t, min_chars=3, max_chars=100_000)
    assert res.kept["conversation_id"].to_list() == ["c0"]
    assert res.kept["user_chars"].to_list() == [[5]]
    assert sorted(res.rejected["detail"].to_list()) == ["chars min=2 max=2", "chars min=5000000 max=5000000"]
    counter = tokens()
    n = counter.count(["hello"])[0]
    res = run(tokens, "length", table(conv("u:hello", "a:x")), max_tokens=n)
    assert res.kept["user_tokens"].to_list() == [[n]]
    res = run(tokens, "length", table(conv("u:hello", "a:x")), max_tokens=max(n - 1, 1))
    assert res.kept.height == 0


def test_quality_scores_by_hand(tokens):
    text = "aa bb\naa bb\ncc"  # 14 chars, 10 alphabetic; lines: 3, 2 unique; words 2,2,2,2,2 -> mean 2
    res = run(tokens, "quality", table(conv("u:" + text, "a:x")))
    row = res.kept.row(0, named=True)
    assert row["user_alpha_ratio"] == [pytest.approx(10 / 14)]
    assert row["user_dup_line_ratio"] == [pytest.approx(1 / 3)]
    assert row["user_mean_word_length"] == [pytest.approx(2.0)]
    assert row["user_symbol_ratio"] == [0.0]
    url = "see https://example.com/a"  # 25 chars, URL is 21 of them
    res = run(tokens, "quality", table(conv("u:" + url, "a:x")))
    assert res.kept["user_url_ratio"].to_list() == [[pytest.approx(21 / 25)]]
    spam = " ".join(["buy cheap pills now"] * 10)  # 40 words, 38 3-grams, 4 distinct
    res = run(tokens, "quality", table(conv("u:" + spam, "a:x")), max_ngram_repetition=0.5)
    assert res.kept.height == 0
    assert res.rejected["detail"][0] == f"ngram_repetition={round(1 - 4 / 38, 3)} fails max_ngram_repetition=0.5"


def test_exact_dedup_keeps_first_and_names_original(tokens):
    t = table(conv("u:Hello  World", "a:1"), conv("u:hello world", "a:2"), conv("u:other", "a:3"))
    res = run(tokens, "exact_dedup", t)
    assert res.kept["conversation_id"].to_list() == ["c0", "c2"]
    assert res.rejected["detail"].to_list() == ["duplicate of c0"]
    assert res.counters["duplicate_clusters"] == 1


def test_near_dedup_clusters_near_copies_only(tokens):
    base = ("I am building a web application with React and Node and I want to add user "
            "authentication with JSON web tokens, refresh tokens and a login page. ") * 3
    near = base.replace("login page", "sign-in page", 1)
    other = "Tell me a story about a dragon who learns to bake bread in a small village by the sea. " * 3
    t = table(conv("u:" + base, "a:1"), conv("u:" + other, "a:2"), conv("u:" + near, "a:3"))
    res = run(tokens, "near_dedup", t, threshold=0.7)
    assert res.kept["conversation_id"].to_list() == ["c0", "c1"]
    assert res.rejected["detail"][0].startswith("near-duplicate of c0")
    assert 0.7 <= res.rejected["score"][0] < 1.0
    assert res.counters["duplicate_clusters"] == 1


def test_plan_segments_by_hand():
    roles = ["user", "assistant"] * 4
    counts = [10, 30] * 4
    # everything fits: one segment
    assert plan_segments(roles, counts, 200, True) == ([list(range(8))], [])
    # budget 90: [0..3] (80); next starts at the overlap assistant 3: [3..5] (70); then [5..7]
    segs, rej = plan_segments(roles, counts, 90, True)
    assert segs == [[0, 1, 2, 3], [3, 4, 5, 6, 7]] or segs == [[0, 1, 2, 3], [3, 4, 5], [5, 6, 7]]
    for s in segs:
        assert roles[s[-1]] == "assistant" and sum(counts[i] for i in s) <= 90
    assert rej == []
    # a pair that can never fit is rejected as a piece; a final unanswered user turn too
    segs, rej = plan_segments(["user", "assistant", "user", "assistant", "user"], [10, 500, 10, 20, 5], 100, True)
    assert segs == [[2, 3]]
    assert rej == [([4], "final user turn was never answered"),
                   ([0, 1], "turn pair longer than max_tokens=100")]


def test_split_with_a_real_tokenizer_and_sliced_scores(tokens):
    long_answer = "The quick brown fox jumps over the lazy dog. " * 20
    t = table(conv("s:be nice", *[f"u:question {i}" if j == 0 else "a:" + long_answer
                                 for i in range(4) for j in range(2)]))
    t = t.with_columns(pl.Series("user_chars", [[10, 10, 10, 10]]))
    counter = tokens()
    per_pair = sum(counter.count(["question 0", long_answer])) + 2 * counter.turn_overhead
    budget = counter.base_overhead + counter.count(["be nice"])[0] + counter.turn_overhead + 2 * per_pair + 5
    res = run(tokens, "split", t, max_tokens=budget)
    segs = res.kept["messages"].to_list()
    assert len(segs) >= 2
    for s in segs:
        assert s[0]["role"] == "system" and s[-1]["role"] == "assistant"
    assert segs[1][1] == segs[0][-1]  # overlap by the previous assistant turn
    assert res.kept["segment"].to_list() == list(range(len(segs)))
    assert all(len(c) == sum(m["role"] == "user" for m in s) for c, s in zip(res.kept["user_chars"], segs))
