"""fix_unicode: mojibake and control characters repaired; what the user typed on purpose stays."""

from __future__ import annotations

import polars as pl

from realchat.curation.ops import REGISTRY
from realchat.steps.curate import BASE_SCHEMA


def run(messages, **params):
    t = pl.DataFrame([{"conversation_id": "a", "source_index": 0, "segment": 0, "messages": messages}],
                     schema=BASE_SCHEMA)
    cls = REGISTRY["fix_unicode"]
    return cls(cls.Params(op="fix_unicode", **params), lambda: None).apply(t)


def test_mojibake_and_escapes_are_repaired():
    res = run([{"role": "user", "content": "It doesnâ€™t work at the cafÃ©\x1b[31m!\x1b[0m"},
               {"role": "assistant", "content": "Ã¼ber"}])
    assert [m["content"] for m in res.kept["messages"][0]] == ["It doesn’t work at the café!", "über"]
    assert res.counters == {"turns_fixed": 2}


def test_what_was_typed_on_purpose_is_left_alone():
    typed = "“Curly” quotes, ﬁ ligature, ｗｉｄｅ, &lt;b&gt; in code, naïve café, e\u0301, Ελληνικά, 日本語"
    res = run([{"role": "user", "content": typed}])
    assert res.kept["messages"][0][0]["content"] == typed
    assert res.counters == {"turns_fixed": 0}


def test_roles_choose_the_turns():
    res = run([{"role": "user", "content": "cafÃ©"}, {"role": "assistant", "content": "cafÃ©"}], roles=["user"])
    assert [m["content"] for m in res.kept["messages"][0]] == ["café", "cafÃ©"]


def test_on_real_data_it_changes_few_turns(sharegpt_records):
    from pathlib import Path  # noqa: F401

    from realchat.curation.conversations import normalize
    from realchat.curation.sources import DEFAULT_ROLES
    from realchat.curation.sources.base import RawRecord

    rows = [normalize(RawRecord(index=i, data=d), DEFAULT_ROLES, "id", "x")[0] for i, d in enumerate(sharegpt_records)]
    t = pl.DataFrame([r for r in rows if r], schema=BASE_SCHEMA)
    cls = REGISTRY["fix_unicode"]
    res = cls(cls.Params(op="fix_unicode"), lambda: None).apply(t)
    turns = t.select(pl.col("messages").list.len().sum()).item()
    assert res.counters["turns_fixed"] < 0.02 * turns  # repairs, not rewriting
    assert res.kept.height == t.height
