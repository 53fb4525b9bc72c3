"""Simulator behaviour on the tiny model: the end marker banned before ``min_rounds``, repeats
resampled (bounded, counted) before the ``repeated_question`` stop, per-turn finish reasons and the
``truncated_answers`` rule; in training the end marker only after conversations that really ended."""

from __future__ import annotations

import polars as pl
import pytest

from realchat.models.backends import LocalModel
from realchat.recipe.base import SamplingParams
from realchat.simulation.simulator import Session, Simulation, SimulationSettings, _norm, similar, trim_to_sentence

GREEDY = SamplingParams(temperature=0, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> LocalModel:
    return LocalModel(str(tiny_model_dir), batch_size=4)


def run(cfg: SimulationSettings, model: LocalModel, sessions: list[Session], marker: str | None = None,
        capacity: int | None = None) -> list[Session]:
    done: list[Session] = []
    Simulation(cfg, model, model, "Ask.", marker, done.append).run(sessions, capacity=capacity)
    return done


def greedy_marker(model: LocalModel) -> str:
    """A printable piece the tiny model writes first when it opens a user turn (greedy): a marker
    it *will* write unless it is banned."""
    cfg = SimulationSettings(user_sampling=GREEDY)
    sim = Simulation(cfg, model, model, "Ask.", None, lambda s: None)
    text = model.generate([sim.simulator_prompt(Session("x", "free", None))], GREEDY)[0].text
    piece = next((c for c in text if c.isprintable() and not c.isspace() and c != "\ufffd"), None)
    assert piece, f"the tiny model wrote nothing printable: {text!r}"
    return piece


def test_end_marker_banned_until_min_rounds(tiny):
    marker = greedy_marker(tiny)
    cfg = SimulationSettings(simulator="usergpt", max_rounds=3, user_sampling=GREEDY, assistant_sampling=GREEDY,
                             stop_on_degenerate=False, min_rounds=0)
    ended = run(cfg, tiny, [Session(f"s{i}", "free", None) for i in range(4)], marker)
    assert [s.stop_reason for s in ended] == ["end_marker"] * 4 and all(s.rounds == 0 for s in ended)
    # banned while decoding (bad words) until one round is complete: every session asks a question
    ended = run(cfg.model_copy(update={"min_rounds": 1}), tiny, [Session(f"s{i}", "free", None) for i in range(4)],
                marker)
    assert all(s.rounds >= 1 for s in ended), [(s.stop_reason, s.rounds) for s in ended]
    assert all(marker not in s.messages[0]["content"] for s in ended)
    # the backend call itself: the banned string is not written
    prompt = Simulation(cfg, tiny, tiny, "Ask.", marker, lambda s: None).simulator_prompt(Session("x", "free", None))
    assert marker in tiny.generate([prompt], GREEDY)[0].text
    assert marker not in tiny.generate([prompt], GREEDY, bad_words=[[marker]])[0].text


def test_repeats_are_resampled_then_stopped(tiny):
    seeded = lambda i: Session(f"s{i}", "seeded", "x", [{"role": "user", "content": "Write a Python function."},  # noqa: E731
                                                          {"role": "assistant", "content": "Sure."}], rounds=1)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=6)
    # everything counts as a repeat of the seed question: resampled max_resamples times, then stopped
    cfg = SimulationSettings(simulator="usergpt", max_rounds=3, user_sampling=sampling, assistant_sampling=GREEDY,
                             repeat_similarity=0.01, max_resamples=2)
    ended = run(cfg, tiny, [seeded(i) for i in range(4)])
    stopped = [s for s in ended if s.stop_reason == "repeated_question"]
    # each question the simulator wrote (one per round after the seed's, and the last) resampled at most twice
    assert stopped and all(2 <= s.repeat_resamples <= 2 * s.rounds for s in stopped)
    assert all(not similar(_norm(m["content"]), "write a python function.", 0.01)
               for s in stopped for m in s.messages[2:] if m["role"] == "user")  # no repeat entered
    # without resamples the stop rule applies at once
    ended = run(cfg.model_copy(update={"max_resamples": 0}), tiny, [seeded(i) for i in range(4)])
    assert all(s.repeat_resamples == 0 for s in ended) and any(s.stop_reason == "repeated_question" for s in ended)
    # greedy decoding would write the same text again: no resampling then
    ended = run(cfg.model_copy(update={"user_sampling": GREEDY}), tiny, [seeded(i) for i in range(2)])
    assert all(s.repeat_resamples == 0 for s in ended)


def test_near_verbatim_similarity_and_trim():
    assert similar("what is rust?", "what is rust?", 0.9)
    assert similar("what is rust exactly?", "what is rust exactly", 0.9)
    assert not similar("what is rust?", "how do i write a web server in go?", 0.9)
    assert not similar("what is rust?", "what is rust!", 1.0)
    assert trim_to_sentence("First part. Second part is cut") == "First part."
    assert trim_to_sentence("A list:\n1. one\n2. tw") == "A list:\n1. one"
    assert trim_to_sentence("no sentence end at all") == ""


def test_finish_reasons_and_truncated_answers(tiny):
    short = SamplingParams(temperature=0.8, max_new_tokens=3)
    base = SimulationSettings(simulator="magpie", max_rounds=2, user_sampling=short, assistant_sampling=short,
                              stop_on_degenerate=False)
    kept = run(base, tiny, [Session(f"s{i}", "free", None) for i in range(6)])
    reasons = [f for s in kept for f in s.finish_reasons]
    assert len(reasons) == sum(s.rounds for s in kept) and set(reasons) <= {"stop", "length"}
    assert "length" in reasons  # 3 tokens: the tiny model is cut at the limit
    assert sum(s.truncated_answers for s in kept) == reasons.count("length")
    dropped = run(base.model_copy(update={"truncated_answers": "drop"}), tiny,
                  [Session(f"s{i}", "free", None) for i in range(6)])
    assert all(f == "stop" for s in dropped for f in s.finish_reasons)
    assert any(s.stop_reason == "truncated_answer" for s in dropped)
    for s in dropped:
        assert [m["role"] for m in s.messages] == ["user", "assistant"] * s.rounds  # complete rounds only
    trimmed = run(base.model_copy(update={"truncated_answers": "trim"}), tiny,
                  [Session(f"s{i}", "free", None) for i in range(6)])
    for s in trimmed:
        assert set(s.finish_reasons) <= {"stop", "trimmed"}
        for m, f in zip([m for m in s.messages if m["role"] == "assistant"], s.finish_reasons):
            if f == "trimmed":
                assert m["content"] and trim_to_sentence(m["content"]) == m["content"]


def test_batch_is_refilled_as_sessions_finish(tiny):
    calls: list[int] = []
    real = tiny.generate

    def counting(prompts, sampling, bad_words=None, role="assistant"):
        calls.append(len(prompts))
        return real(prompts, sampling, bad_words, role)

    tiny.generate = counting  # type: ignore[method-assign]
    try:
        cfg = SimulationSettings(simulator="magpie", max_rounds=2, user_sampling=GREEDY, assistant_sampling=GREEDY,
                                 stop_on_degenerate=False)
        # sessions seeded with 0 or 1 complete rounds finish at different steps; capacity 3 of 7
        sessions = [Session(f"s{i}", "seeded", None, [{"role": "user", "content": "Hello"},
                                                     {"role": "assistant", "content": "Hi."}][: 2 * (i % 2)],
                            rounds=i % 2) for i in range(7)]
        done = run(cfg, tiny, sessions, capacity=3)
    finally:
        del tiny.generate
    assert len(done) == 7 and {s.stop_reason for s in done} == {"max_rounds"}
    assert max(calls) <= 3 and calls.count(3) >= len(calls) - 2  # full batches until the input runs out


def test_end_marker_only_after_conversations_that_really_ended(tmp_path):
    from realchat.data import read_step_conversations
    from realchat.steps.sft import SftConfig, prepare
    from realchat.training.chat_format import as_user_simulator

    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert as_user_simulator(conv, "Ask.", "<|end|>")[-1] == {"role": "user", "content": "<|end|>"}
    assert as_user_simulator(conv, "Ask.", "<|end|>", ended=False)[-1]["role"] == "assistant"
    # curate's split writes ends_conversation; a cut segment trains no end marker
    (tmp_path / "data").mkdir()
    msgs = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    pl.DataFrame({"conversation_id": ["a", "a", "b"], "segment": [0, 1, 0], "messages": [conv, conv, conv],
                  "ends_conversation": [False, True, True]},
                 schema={"conversation_id": pl.String, "segment": pl.Int64, "messages": msgs,
                         "ends_conversation": pl.Boolean}).write_parquet(tmp_path / "data" / "x.parquet")
    convs = read_step_conversations(tmp_path)
    assert [c["ends_conversation"] for c in convs] == [False, True, True]
    cfg = SftConfig(loss_on="user", base_model="x", dataset="curate", end_marker="<|end|>")
    ends = [m[-1]["content"] == "<|end|>" for m in prepare(cfg, convs)]
    assert ends == [False, True, True]
    # without the column (older curate outputs) every conversation counts as ended
    pl.read_parquet(tmp_path / "data" / "x.parquet").drop("ends_conversation").write_parquet(
        tmp_path / "data" / "x.parquet")
    old = read_step_conversations(tmp_path)
    assert all("ends_conversation" not in c for c in old)
    assert all(m[-1]["content"] == "<|end|>" for m in prepare(cfg, old))


def test_batching_choice_per_backend(tiny):
    from types import SimpleNamespace

    from realchat.steps.simulate import simulation_batching

    assert simulation_batching(tiny) == ("waves", 16)  # the tiny model on this CPU, batch 4
    assert simulation_batching(SimpleNamespace(device="cuda", batch_size=128)) == ("refill", 128)
    assert simulation_batching(SimpleNamespace(cfg=SimpleNamespace(max_concurrency=8))) == ("refill", 8)
    assert simulation_batching(SimpleNamespace()) == ("refill", 256)  # vLLM schedules its own batch
