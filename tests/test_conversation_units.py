"""A "conversation" is a real conversation, not a curate segment (issue 27): split marks the segments
that start with a follow-up whose answer did not fit; sizes and samples count conversations drawn
by the seed; seeds, intents and evaluate's statistics take each conversation's first segment; the
fidelity reference does not floor the compared datasets."""

from __future__ import annotations

import polars as pl

from realchat.curation.ops import REGISTRY
from realchat.data import (conversation_order, fastchat_conversation, opens_conversation, read_step_conversations,
                           sample_conversations)
from realchat.models import token_counter
from realchat.steps.curate import BASE_SCHEMA
from realchat.steps.evaluate import EvaluateConfig, sample_sizes

LONG = "The quick brown fox jumps over the lazy dog. " * 12


def _split(rows: list[list[dict]], counter, budget: int) -> object:
    table = pl.DataFrame([{"conversation_id": f"c{i}", "source_index": i, "segment": 0, "messages": m}
                          for i, m in enumerate(rows)], schema=BASE_SCHEMA)
    params = REGISTRY["split"].Params(op="split", max_tokens=budget)
    return REGISTRY["split"](params, lambda: counter, None).apply(table)


def test_split_marks_follow_ups_whose_answer_did_not_fit(tiny_tokenizer_dir, tmp_path):
    counter = token_counter(str(tiny_tokenizer_dir))
    # each answer is long: the overlap answer + the next round cannot fit the budget, so segment 2
    # starts with "continue" and nothing before it
    conv = [{"role": "user", "content": "Write a story."}, {"role": "assistant", "content": LONG},
            {"role": "user", "content": "continue"}, {"role": "assistant", "content": LONG}]
    fits = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and?"}, {"role": "assistant", "content": "more"}]
    pair = sum(counter.count(["Write a story.", LONG])) + 2 * counter.turn_overhead
    res = _split([conv, fits], counter, counter.base_overhead + pair + 3)
    kept = res.kept.sort(["source_index", "segment"])
    rows = kept.select("conversation_id", "segment", "follows_unseen_answer").rows()
    assert rows == [("c0", 0, False), ("c0", 1, True), ("c1", 0, False)]
    assert kept.filter(pl.col("follows_unseen_answer"))["messages"].to_list()[0][0]["content"] == "continue"
    assert res.counters["segments_without_overlap"] == 1 and res.counters["segments"] == 3

    # the readers carry the flag; only a conversation's own first segment opens it
    (tmp_path / "s" / "data").mkdir(parents=True)
    kept.with_columns(pl.lit("train").alias("split")).write_parquet(tmp_path / "s" / "data" / "a.parquet")
    convs = read_step_conversations(tmp_path / "s")
    assert [(c["id"], c["base_id"], opens_conversation(c)) for c in convs] == [
        ("c0", "c0", True), ("c0#1", "c0", False), ("c1", "c1", True)]


def test_split_keeps_the_overlap_when_it_fits(tiny_tokenizer_dir):
    counter = token_counter(str(tiny_tokenizer_dir))
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "fox " * 10} for i in range(8)]
    res = _split([turns], counter, 120)
    kept = res.kept.sort("segment")
    assert kept.height >= 2 and not any(kept["follows_unseen_answer"].to_list())
    for msgs in kept["messages"].to_list()[1:]:  # later segments open with the answer they continue from
        assert msgs[0]["role"] == "assistant"
    assert res.counters["segments_without_overlap"] == 0


def test_samples_count_conversations_drawn_by_the_seed():
    convs = [{"id": f"c{i}" + (f"#{k}" if k else ""), "base_id": f"c{i}", "messages": []}
             for i in range(20) for k in range(3 if i < 2 else 1)]  # c0, c1: three segments each
    got = sample_conversations(convs, 5, seed=1)
    assert len({c["base_id"] for c in got}) == 5
    for cid in {c["base_id"] for c in got}:  # every segment of a chosen conversation, none of the others
        assert [c["id"] for c in got if c["base_id"] == cid] == [c["id"] for c in convs if c["base_id"] == cid]
    heads = [f"c{i}" for i in range(5)]
    assert conversation_order(convs, 1) != conversation_order(convs, 2)  # the seed draws
    assert [c["base_id"] for c in sample_conversations(convs, 5, 1)] != heads or \
        [c["base_id"] for c in sample_conversations(convs, 5, 2)] != heads  # not the file's head
    assert sample_conversations(convs, 5, 1) == got and sample_conversations(convs, None, 1) == convs


def test_equal_size_is_not_floored_by_the_fidelity_reference():
    cfg = EvaluateConfig(datasets=[{"name": n, "dataset": "x"} for n in ("sharegpt", "free", "roleplay")],
                         max_conversations=1000, equal_size=True,
                         fidelity={"simulator_model": "x", "real": "sharegpt", "simulated": ["free", "roleplay"]})
    assert sample_sizes(cfg, {"sharegpt": 40, "free": 700, "roleplay": 600}) == {
        "sharegpt": 40, "free": 600, "roleplay": 600}
    no_fid = EvaluateConfig(datasets=[{"name": n, "dataset": "x"} for n in ("a", "b")], equal_size=True,
                            max_conversations=None)
    assert sample_sizes(no_fid, {"a": 40, "b": 700}) == {"a": 40, "b": 40}


def test_a_card_lists_a_dataset_two_inputs_read_once():
    """usergpt reads curate twice (dataset and eval_dataset): its card's ``datasets`` names it once."""
    from realchat.hub.cards import _dataset_repos

    parents = [{"key": "base_model", "repo": "org/base", "repo_type": "model"},
               {"key": "dataset", "repo": "org/curate", "repo_type": "dataset", "split": "train"},
               {"key": "eval_dataset", "repo": "org/curate", "repo_type": "dataset", "split": "held_out"}]
    assert _dataset_repos(parents) == ["org/curate"]


def test_fastchat_segment_ids_make_one_conversation_of_a_split_sources_records(make_recipe, write_json_array,
                                                                              sharegpt_records, tmp_path):
    """The shipped ShareGPT (as the paper's Hub source) is FastChat's split: records ``<id>_<k>`` are
    segments of one conversation. With ``fastchat_segment_ids`` they are one conversation: one split
    side, the first segment opens it, a later one opens with a follow-up whose answer is elsewhere."""
    import json

    from typer.testing import CliRunner

    from realchat.cli import app

    records = sharegpt_records[:200]
    later = [r["id"] for r in records if not r["id"].endswith("_0")]
    assert len(later) > 20  # the file really is split (hRPPgZT_11, …)
    recipe = make_recipe(write_json_array(records), filters=[{"op": "shape"}], held_out_share=0.4,
                         fastchat_segment_ids=True)
    r = CliRunner().invoke(app, ["build", str(recipe), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "t" / "curate"
    df = pl.read_parquet(out / "data")
    ids = df["conversation_id"].to_list()
    assert fastchat_conversation("hRPPgZT_11") == "hRPPgZT_0" == fastchat_conversation("hRPPgZT_0")
    assert fastchat_conversation("c7") == "c7" and fastchat_conversation("a_1~2") == "a_1~2"  # a renamed duplicate
    assert json.loads((out / "stats.json").read_text())["fastchat_later_segments"] == \
        sum(fastchat_conversation(i) != i for i in ids) > 0
    # one conversation, one side of the held-out split
    sides = df.group_by("base_conversation_id").agg(pl.col("split").n_unique().alias("n"))
    assert sides["n"].max() == 1 and df["split"].n_unique() == 2
    convs = read_step_conversations(out)
    by_id = {c["id"]: c for c in convs}
    for c in convs:
        first = fastchat_conversation(c["id"]) == c["id"]
        assert opens_conversation(c) == first and c["base_id"] == fastchat_conversation(c["id"])
        assert bool(c.get("follows_unseen_answer")) != first
    # the conversation sample keeps every segment of the conversations it draws
    drawn = sample_conversations(convs, 5, 0)
    assert len({c["base_id"] for c in drawn}) == 5
    assert {c["id"] for c in drawn} == {i for i, c in by_id.items() if c["base_id"] in {d["base_id"] for d in drawn}}
