"""redact_pii: each kind on made-up text, what it must leave alone, the reject mode, and the shipped data."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from realchat.curation.ops import REGISTRY
from realchat.curation.ops.redact_pii import luhn_ok
from realchat.steps.curate import BASE_SCHEMA


def table(*conversations):
    rows = [{"conversation_id": f"c{i}", "source_index": i, "segment": 0,
             "messages": [{"role": r, "content": c} for r, c in m]} for i, m in enumerate(conversations)]
    return pl.DataFrame(rows, schema=BASE_SCHEMA)


def run(tbl, **params):
    cls = REGISTRY["redact_pii"]
    return cls(cls.Params(op="redact_pii", **params), lambda: None).apply(tbl)


# One made-up finding of every kind, and what each must become.
CASES = [
    ("write to jane.roe+news@mail.example.org today", "write to <EMAIL> today", "email"),
    ("call me at +44 20 7946 0958 tonight", "call me at <PHONE> tonight", "phone"),
    ("my office is (415) 555-2671, ext 3", "my office is <PHONE>, ext 3", "phone"),
    ("the server 203.0.113.7 is down", "the server 203.0.113.7 is down", None),  # documentation range: not public
    ("the server 13.250.2.198 is down", "the server <IP_ADDRESS> is down", "ip_address"),
    ("reach 2001:4860:4860::8888 over v6", "reach <IP_ADDRESS> over v6", "ip_address"),
    ("card 4539 1488 0343 6467 exp 09/27", "card <CREDIT_CARD> exp 09/27", "credit_card"),
    ("amex 3714-496353-98431 ok", "amex <CREDIT_CARD> ok", "credit_card"),
    ("OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "OPENAI_API_KEY=<API_KEY>", "api_key"),
    ("aws AKIAIOSFODNN7EXAMPLE key", "aws <API_KEY> key", "api_key"),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ012345 here", "token <API_KEY> here", "api_key"),
    ("slack xoxb-1234567890-abcdefghij", "slack <API_KEY>", "api_key"),
    ("hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345 is mine", "<API_KEY> is mine", "api_key"),
    ("-H 'Authorization: Bearer abcDEF123456ghiJKL789012mno'", "-H 'Authorization: Bearer <API_KEY>'", "api_key"),
    ("DB=postgres://admin:s3cret@db.internal:5432/app", "DB=postgres://<CREDENTIALS>@db.internal:5432/app",
     "url_credentials"),
]

# Lookalikes in ordinary chat and code: nothing here is personal data.
LEAVE_ALONE = [
    "run it on 127.0.0.1:8000 or 192.168.1.10, then bump to version 1.2.3.4",
    "see section 1.1.2.3 of the spec; Chrome/110.0.0.0 Safari",
    "on 2023-03-15 at 12:30:45 the price was 1234567, order 423-32442-21332",
    "ids 1678901234 and 4111111111111112 (not Luhn-valid), ISBN 978-3-16-148410-0",
    "@property\ndef f(self): return a@b",
    "matrix [ 722 481 842 1955 550 236]",
    "the key is YOUR_API_KEY and sk-short",
]


@pytest.mark.parametrize("text,expected,kind", CASES)
def test_each_kind_is_replaced_by_its_placeholder(text, expected, kind):
    res = run(table([("user", text), ("assistant", "noted")]))
    assert res.kept["messages"][0][0]["content"] == expected
    if kind:
        assert res.counters[kind] == 1
        assert res.counters["turns_with_pii"] == 1
    else:
        assert res.counters["turns_with_pii"] == 0


@pytest.mark.parametrize("text", LEAVE_ALONE)
def test_lookalikes_are_left_alone(text):
    res = run(table([("user", text)]))
    assert res.kept["messages"][0][0]["content"] == text
    assert res.counters["conversations_with_pii"] == 0


def test_luhn():
    assert luhn_ok("4539148803436467") and luhn_ok("371449635398431")
    assert not luhn_ok("4539148803436468")


def test_a_private_key_block_and_several_kinds_in_one_turn():
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc\n-----END RSA PRIVATE KEY-----"
    text = f"key:\n{pem}\nmail a@b.io, phone +1 415 555 2671"
    res = run(table([("user", text)]))
    assert res.kept["messages"][0][0]["content"] == "key:\n<API_KEY>\nmail <EMAIL>, phone <PHONE>"
    assert (res.counters["api_key"], res.counters["email"], res.counters["phone"]) == (1, 1, 1)


def test_roles_and_kinds_choose_what_is_searched():
    t = table([("user", "me: a@b.io"), ("assistant", "you: c@d.io, 13.250.2.198")])
    res = run(t)
    msgs = res.kept["messages"][0]
    assert [m["content"] for m in msgs] == ["me: <EMAIL>", "you: c@d.io, 13.250.2.198"]
    res = run(t, roles=["user", "assistant"], kinds=["ip_address"])
    assert [m["content"] for m in res.kept["messages"][0]] == ["me: a@b.io", "you: c@d.io, <IP_ADDRESS>"]
    assert res.counters == {"ip_address": 1, "turns_with_pii": 1, "conversations_with_pii": 1}


def test_reject_mode_keeps_text_and_rejects_with_the_turns_and_kinds():
    t = table([("user", "hi"), ("assistant", "hello")],
              [("user", "ok"), ("assistant", "sure"), ("user", "mail x@y.com or +1 415 555 2671")])
    res = run(t, mode="reject")
    assert res.kept["conversation_id"].to_list() == ["c0"]
    assert res.rejected["conversation_id"].to_list() == ["c1"]
    assert res.rejected["detail"].to_list() == ["turn 2 (user): email, phone"]
    assert res.rejected["messages"][0][2]["content"] == "mail x@y.com or +1 415 555 2671"


def test_a_step_with_redact_pii_counts_in_stats_and_card(make_recipe, write_json_array, tmp_path):
    from typer.testing import CliRunner

    from realchat.cli import app

    records = [{"id": "p1", "conversations": [{"from": "human", "value": "mail me: bob@corp.example.com"},
                                               {"from": "gpt", "value": "ok"}]},
               {"id": "p2", "conversations": [{"from": "human", "value": "no secrets here"},
                                               {"from": "gpt", "value": "good"}]}]
    recipe = make_recipe(write_json_array(records), filters=[{"op": "redact_pii"}])
    result = CliRunner().invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "t" / "curate"
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["pii"]["email"] == 1 and stats["pii"]["conversations_with_pii"] == 1
    kept = pl.read_parquet(folder / "data")
    assert kept.sort("conversation_id")["messages"][0][0]["content"] == "mail me: <EMAIL>"
    card = (folder / "README.md").read_text()
    assert "Personal data" in card and "| email | 1 |" in card


@pytest.mark.slow
def test_on_the_shipped_data_it_finds_and_replaces():
    """All 17,671 shipped conversations: counts what it finds, and no e-mail address survives."""
    from realchat.curation.conversations import normalize
    from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source

    records, _ = open_source(SourceConfig(), Path("."))
    rows = [r for r, _ in (normalize(rec, DEFAULT_ROLES, "id", "x") for rec in records) if r is not None]
    res = run(pl.DataFrame(rows, schema=BASE_SCHEMA))
    c = res.counters
    print("shipped data:", c)
    # measured on the shipped file: e-mails 333, phones 143, public IPs 20, URL credentials 10, keys 8
    assert c["email"] > 200 and c["phone"] > 50 and c["ip_address"] > 5
    assert c["url_credentials"] > 0 and c["api_key"] > 0
    assert c["conversations_with_pii"] < 0.02 * len(rows)  # a few, not noise everywhere
    user = res.kept.select(pl.col("messages").explode().struct.unnest()).filter(pl.col("role") == "user")
    assert user.filter(pl.col("content").str.contains(r"[\w.+-]+@[\w-]+\.[a-z]{2,}\b")).height < 5
    assert user.filter(pl.col("content").str.contains("<EMAIL>")).height > 100
