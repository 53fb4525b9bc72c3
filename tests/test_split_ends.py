"""``split`` marks the segments that end where the conversation really ended (``ends_conversation``)."""

from __future__ import annotations

import polars as pl

from realchat.curation.ops import REGISTRY
from realchat.models import token_counter
from realchat.steps.curate import BASE_SCHEMA


def test_ends_conversation_marks_only_the_segment_that_reaches_the_real_end(tiny_tokenizer_dir):
    counter = token_counter(str(tiny_tokenizer_dir))
    long_answer = "The quick brown fox jumps over the lazy dog. " * 20
    cut = [{"role": "user" if j == 0 else "assistant", "content": f"question {i}" if j == 0 else long_answer}
           for i in range(4) for j in range(2)]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    unanswered = short + [{"role": "user", "content": "and?"}]  # the last user turn is never answered
    rows = [{"conversation_id": f"c{i}", "source_index": i, "segment": 0, "messages": m}
            for i, m in enumerate([cut, short, unanswered])]
    per_pair = sum(counter.count(["question 0", long_answer])) + 2 * counter.turn_overhead
    params = REGISTRY["split"].Params(op="split", max_tokens=counter.base_overhead + 2 * per_pair + 5)
    res = REGISTRY["split"](params, lambda: counter, None).apply(pl.DataFrame(rows, schema=BASE_SCHEMA))
    kept = res.kept.sort(["source_index", "segment"])
    by_conv = {cid: flags for cid, flags in kept.group_by("conversation_id", maintain_order=True)
               .agg(pl.col("ends_conversation")).iter_rows()}
    assert len(by_conv["c0"]) >= 2 and by_conv["c0"][-1] is True and not any(by_conv["c0"][:-1])
    assert by_conv["c1"] == [True]
    assert by_conv["c2"] == [True]  # ends at its real last assistant turn; the dangling question is a rejected piece
    assert res.rejected["ends_conversation"].to_list() == [False]
    assert kept.schema["ends_conversation"] == pl.Boolean


def test_step_readers_carry_ends_conversation_and_intent(tmp_path):
    """A step's data with the optional columns: every conversation dict carries them (evaluate's ending
    measure reads ``ends_conversation``, the intent measures ``intent``); without them, no key."""
    from realchat.data import read_step_conversations

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    (tmp_path / "a" / "data").mkdir(parents=True)
    pl.DataFrame({"conversation_id": ["c1", "c1"], "segment": [0, 1], "messages": [msgs, msgs],
                  "ends_conversation": [False, True], "intent": ["say hi", "say hi"]}
                 ).write_parquet(tmp_path / "a" / "data" / "train-0.parquet")
    got = read_step_conversations(tmp_path / "a")
    assert [(c["id"], c["ends_conversation"], c["intent"]) for c in got] == [("c1", False, "say hi"),
                                                                             ("c1#1", True, "say hi")]
    (tmp_path / "b" / "data").mkdir(parents=True)
    pl.DataFrame({"conversation_id": ["c2"], "messages": [msgs]}).write_parquet(tmp_path / "b" / "data" / "t.parquet")
    assert set(read_step_conversations(tmp_path / "b")[0]) == {"id", "base_id", "messages"}


def test_only_whole_conversations_are_scored_for_ending():
    from realchat.steps.evaluate import is_whole

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert is_whole({"id": "c", "base_id": "c", "messages": msgs, "ends_conversation": True})
    assert is_whole({"id": "c", "base_id": "c", "messages": msgs})  # a file's record: not split
    assert not is_whole({"id": "c", "base_id": "c", "messages": msgs, "ends_conversation": False})  # cut
    assert not is_whole({"id": "c#1", "base_id": "c", "messages": msgs, "ends_conversation": True})  # a later segment
    assert not is_whole({"id": "c", "base_id": "c", "messages": msgs + [{"role": "user", "content": "?"}]})
