"""Tokens, cost, budgets and the Batch API against a real HTTP server on 127.0.0.1 (tests/fake_openai.py):
each served role's tokens are the server's own usage figures, priced by the recipe's table; a spent
budget stops the step (exit 3) with its part file kept, and reruns resume to the very output an
uninterrupted run gives; ``batch: true`` answers through uploaded files and batches, and a kill -9
while a batch is pending re-attaches to it instead of paying again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml
from fake_openai import FakeOpenAI
from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()
PRICES = {"currency": "EUR", "models": {"fake-sim": {"input": 2.0, "output": 8.0},
                                        "fake-chat": {"input": 1.5, "output": 6.0},
                                        "fake-sum": {"input": 0.5, "output": 1.0}}}


@pytest.fixture
def fake():
    with FakeOpenAI(polls_to_finish=3) as f:
        yield f


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A RealChat cache of this test's own: intent summaries are cached by request across steps and
    builds, so another test's summaries of the same conversations would be found there."""
    monkeypatch.setenv("REALCHAT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir):
    def make(base_url: str, prices: dict | None = PRICES, answerer: dict | None = None, **simulate) -> Path:
        path = make_recipe(write_json_array(sharegpt_records[:20]), filters=[{"op": "shape"}], name="cost")
        doc = yaml.safe_load(path.read_text())
        server = {"kind": "openai", "base_url": base_url, "max_concurrency": 3, "timeout_s": 30, "max_retries": 0}
        doc["steps"]["simulate"] = {
            "kind": "simulate", "simulator": "usergpt", "end_marker": "<|endconversation|>",
            "simulator_backend": {**server, "model": "fake-sim", "tokenizer": str(tiny_model_dir)},
            "answerer": {**server, "model": "fake-chat", **(answerer or {})},
            "conversations": 8, "max_rounds": 3, "context_budget": 1024,
            "user_sampling": {"max_new_tokens": 6}, "assistant_sampling": {"max_new_tokens": 5}, **simulate}
        if prices is not None:
            doc["prices"] = prices
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


def _build(recipe: Path, *args: str):
    return runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push", *args])


def _stats(tmp_path: Path, runs: str = "runs") -> dict:
    return json.loads((tmp_path / runs / "cost" / "simulate" / "stats.json").read_text())


def _conversations(tmp_path: Path, runs: str = "runs") -> dict[str, str]:
    folder = tmp_path / runs / "cost" / "simulate"
    frames = [pl.read_parquet(p) for sub in ("data", "rejected") for p in sorted((folder / sub).glob("*.parquet"))]
    rows = pl.concat(frames).to_dicts()
    assert len(rows) == len({r["session_id"] for r in rows}), "a session id twice"
    return {r["session_id"]: json.dumps(r["messages"]) for r in rows}


def test_served_roles_report_the_servers_usage_and_its_cost(recipe, fake, tmp_path):
    r = _build(recipe(fake.base_url))
    assert r.exit_code == 0, r.output
    usage = _stats(tmp_path)["usage"]
    sim, ans = usage["roles"]["simulator"], usage["roles"]["answerer"]
    # RealChat's counts are the usage the server reported, request by request
    assert sim["calls"] == fake.usage["/v1/completions:calls"] > 0
    assert sim["prompt_tokens"] == fake.usage["/v1/completions:prompt"] > 0
    assert sim["completion_tokens"] == fake.usage["/v1/completions:completion"] > 0
    assert ans["calls"] == fake.usage["/v1/chat/completions:calls"] > 0
    assert ans["prompt_tokens"] == fake.usage["/v1/chat/completions:prompt"] > 0
    assert ans["completion_tokens"] == fake.usage["/v1/chat/completions:completion"] > 0
    # cost = tokens × price per 1M, per role and in total
    assert sim["cost"] == pytest.approx((sim["prompt_tokens"] * 2.0 + sim["completion_tokens"] * 8.0) / 1e6)
    assert ans["cost"] == pytest.approx((ans["prompt_tokens"] * 1.5 + ans["completion_tokens"] * 6.0) / 1e6)
    assert usage["cost"] == pytest.approx(sim["cost"] + ans["cost"], abs=1e-6) and usage["currency"] == "EUR"
    assert usage["total_tokens"] == sim["tokens"] + ans["tokens"] == usage["tokens_this_run"]
    card = (tmp_path / "runs" / "cost" / "simulate" / "README.md").read_text()
    assert "## Tokens and cost" in card and f"{ans['prompt_tokens']:,}" in card and "`fake-chat`" in card


def test_local_roles_count_their_token_ids(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, tmp_path):
    path = make_recipe(write_json_array(sharegpt_records[:20]), filters=[{"op": "shape"}], name="cost")
    doc = yaml.safe_load(path.read_text())
    local = {"kind": "local", "model": str(tiny_model_dir), "batch_size": 4}
    doc["steps"]["simulate"] = {"kind": "simulate", "simulator_backend": local, "answerer": local,
                                "end_marker": "<|endconversation|>", "conversations": 3, "max_rounds": 1,
                                "context_budget": 512, "user_sampling": {"max_new_tokens": 4},
                                "assistant_sampling": {"max_new_tokens": 4}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = _build(path)
    assert r.exit_code == 0, r.output
    stats = _stats(tmp_path)
    roles = stats["usage"]["roles"]
    # completion tokens are the generated ids the step already counts; prompts are the ids fed in
    assert roles["simulator"]["completion_tokens"] + roles["answerer"]["completion_tokens"] == stats[
        "generated_tokens_this_run"]
    assert roles["simulator"]["prompt_tokens"] > 0 and roles["answerer"]["prompt_tokens"] > 0
    assert "cost" not in roles["answerer"] and "cost" not in stats["usage"]  # no price table: tokens only


def test_max_cost_stops_cleanly_and_reruns_resume_to_the_uninterrupted_output(recipe, fake, tmp_path):
    path = recipe(fake.base_url)
    assert _build(path, "--set", f"run_root={tmp_path / 'whole'}").exit_code == 0  # the uninterrupted run
    whole, whole_usage = _conversations(tmp_path, "whole"), _stats(tmp_path, "whole")["usage"]
    assert len(whole) == 8
    work = tmp_path / "runs" / "cost" / ".work"

    # a third of what the whole run cost: the step stops, exit 3, one clear line, nothing written
    limit = whole_usage["cost"] / 3
    r = _build(path, "--set", f"steps.simulate.max_cost={limit}")
    assert r.exit_code == 3, r.output
    text = " ".join(r.output.split())
    assert "stopped:" in text and "budget reached" in text and "steps.simulate.max_cost" in text
    assert "raise max_cost" in text and "Traceback" not in r.output
    assert not (tmp_path / "runs" / "cost" / "simulate").exists()
    parts = list(work.glob("simulate-*/parts.jsonl"))
    spent = json.loads(next(work.glob("simulate-*/usage.json")).read_text())
    first = len(parts[0].read_text().splitlines())
    assert 0 < first < 8

    # the same limit again: what the stopped run spent counts, so it stops at once, asking nothing
    calls = fake.usage["/v1/chat/completions:calls"] + fake.usage["/v1/completions:calls"]
    r = _build(path, "--set", f"steps.simulate.max_cost={limit}")
    assert r.exit_code == 3, r.output
    assert fake.usage["/v1/chat/completions:calls"] + fake.usage["/v1/completions:calls"] == calls
    assert json.loads(next(work.glob("simulate-*/usage.json")).read_text()) == spent

    # a higher limit resumes the same work folder (budgets are not in the fingerprint) and finishes
    r = _build(path, "--set", f"steps.simulate.max_cost={whole_usage['cost'] * 10}")
    assert r.exit_code == 0, r.output
    assert _conversations(tmp_path) == whole  # no duplicates, no gaps, the same conversations
    usage = _stats(tmp_path)["usage"]
    assert _stats(tmp_path)["resumed_with"] == first
    # the total counts every run of the step (sessions cut off by the stop were paid for too)
    assert usage["total_tokens"] >= whole_usage["total_tokens"] > usage["tokens_this_run"]
    assert usage["budget"]["max_cost"] == whole_usage["cost"] * 10


def test_max_tokens_total_stops_too(recipe, fake, tmp_path):
    r = _build(recipe(fake.base_url, prices=None, max_tokens_total=50))
    assert r.exit_code == 3, r.output
    assert "max_tokens_total" in " ".join(r.output.split())


def test_a_budget_stops_simulates_intent_summariser_between_its_batches(recipe, fake, own_cache):
    summarizer = {"backend": {"kind": "openai", "base_url": fake.base_url, "model": "fake-sum", "max_retries": 0},
                  "batch_size": 4, "max_new_tokens": 5}
    r = _build(recipe(fake.base_url, prices=None, max_tokens_total=1,
                      intent={"source": "dataset", "dataset": "curate", "summarizer": summarizer}))
    assert r.exit_code == 3, r.output
    text = " ".join(r.output.split())
    assert "steps.simulate.max_tokens_total" in text and "intent summaries written so far are kept" in text
    # one batch of summaries, then the stop: no session was simulated
    assert fake.usage["/v1/chat/completions:calls"] == 4 and fake.usage["/v1/completions:calls"] == 0


def test_max_cost_needs_a_price_for_every_endpoint(recipe, fake):
    r = _build(recipe(fake.base_url, prices={"models": {"fake-sim": {"input": 1, "output": 1}}}, max_cost=1.0))
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "steps.simulate.max_cost" in text and "fake-chat" in text and "prices" in text


def test_batch_answerer_completes_and_reattaches_after_kill_9(recipe, tmp_path):
    with FakeOpenAI(polls_to_finish=25) as fake:
        path = recipe(fake.base_url, answerer={"batch": True, "batch_poll_s": 0.1})
        assert _build(path, "--only", "curate").exit_code == 0
        proc = subprocess.Popen([sys.executable, "-m", "realchat.cli", "build", str(path), "--no-progress",
                                 "--no-push"], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        work, state = tmp_path / "runs" / "cost" / ".work", {}
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not state.get("batch_id"):
            for f in work.glob("simulate-*/batches/*.json"):
                state = json.loads(f.read_text() or "{}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert state.get("batch_id") == "batch-0000", state  # the first round's batch, submitted then killed
        assert fake.batches["batch-0000"]["status"] == "in_progress"
        polled = fake.retrieved["batch-0000"]

        r = _build(path)
        assert r.exit_code == 0, r.output
        assert "re-attached" in r.output
        # one batch per round (all sessions' turn k together), each created exactly once
        rounds = 3
        assert fake.created == [f"batch-{i:04d}" for i in range(rounds)]
        assert fake.retrieved["batch-0000"] > polled  # the rerun polled the killed run's batch
        assert len(fake.uploads()) == rounds
        assert len(_conversations(tmp_path)) == 8
        stats = _stats(tmp_path)
        ans = stats["usage"]["roles"]["answerer"]
        assert ans["batch"] is True and ans["calls"] == fake.usage["batch:calls"]
        assert ans["prompt_tokens"] == fake.usage["batch:prompt"] and ans["completion_tokens"] == fake.usage[
            "batch:completion"]
        assert fake.usage["/v1/chat/completions:calls"] == 0  # every answer went through the Batch API
        # a Batch API request costs prices.batch_share (half) of the listed price
        assert ans["cost"] == pytest.approx((ans["prompt_tokens"] * 1.5 + ans["completion_tokens"] * 6.0) / 2e6)
        assert stats["batching"] == "rounds"


def test_a_served_simulator_cannot_batch(recipe, fake):
    path = recipe(fake.base_url)
    doc = yaml.safe_load(path.read_text())
    doc["steps"]["simulate"]["simulator_backend"]["batch"] = True
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = _build(path)
    assert r.exit_code == 2 and "text completions" in " ".join(r.output.split())


def test_plan_estimates_calls_tokens_and_cost_of_served_steps(recipe, fake):
    path = recipe(fake.base_url)
    r = runner.invoke(app, ["plan", str(path), "--json"])
    assert r.exit_code == 0, r.output
    steps = {p["name"]: p for p in json.loads(r.output)}
    sim = {e["role"]: e for e in steps["simulate"]["estimate"]}
    # 8 sessions × 3 rounds, every turn at its limit (6 user tokens, 5 answer tokens)
    assert sim["simulator"]["calls"] == sim["answerer"]["calls"] == 24
    assert sim["simulator"]["completion_tokens"] == 24 * 6 and sim["answerer"]["completion_tokens"] == 24 * 5
    assert sim["answerer"]["prompt_tokens"] > sim["answerer"]["calls"] * 5
    a = sim["answerer"]
    assert a["cost"] == pytest.approx((a["prompt_tokens"] * 1.5 + a["completion_tokens"] * 6.0) / 1e6, abs=1e-4)
    assert steps["curate"]["estimate"] == []
    r = runner.invoke(app, ["plan", str(path)])
    assert r.exit_code == 0 and "estimated model calls and tokens" in r.output and "an estimate" in r.output


# -- the judge and the intent summariser through the Batch API ------------------------------------

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"
JUDGE_PRICES = {"currency": "EUR", "models": {"fake-a": {"input": 1.0, "output": 2.0},
                                              "fake-b": {"input": 1.0, "output": 2.0},
                                              "fake-judge": {"input": 3.0, "output": 12.0}}}


def _kill_when_batch_pending(path: Path, states: str, timeout_s: float = 120) -> dict:
    """Build ``path`` in a subprocess, SIGKILL it as soon as a batch id is in a state file matching
    ``states`` (the fake holds every batch pending meanwhile); the state file's content."""
    proc = subprocess.Popen([sys.executable, "-m", "realchat.cli", "build", str(path), "--no-progress", "--no-push"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state: dict = {}
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None and not state.get("batch_id"):
        for f in path.parent.glob(states):
            state = json.loads(f.read_text() or "{}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return state


@pytest.fixture
def eval_recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir):
    """An evaluate step with MT-Bench only: two served models answer, a served judge grades (single
    and pairwise) with FastChat's prompts from ../shared/eval."""

    def make(base_url: str, judge: dict | None = None, **evaluate) -> Path:
        path = make_recipe(write_json_array(sharegpt_records[:10]), filters=[{"op": "shape"}], name="cost")
        doc = yaml.safe_load(path.read_text())
        server = {"kind": "openai", "base_url": base_url, "max_concurrency": 4, "timeout_s": 30, "max_retries": 0}
        doc["steps"]["evaluate"] = {
            "kind": "evaluate", "tokenizer": str(tiny_model_dir),
            "benchmark": {"questions": str(EVAL), "benchmarks": ["mt_bench"], "max_questions": 3,
                          "max_new_tokens": 5, "judge_max_new_tokens": 16, "modes": ["single", "pairwise"],
                          "models": [{"name": "m-a", "backend": {**server, "model": "fake-a"}},
                                     {"name": "m-b", "backend": {**server, "model": "fake-b"}}],
                          "pairwise_baseline": "m-b",
                          "judge": {**server, "model": "fake-judge", **(judge or {})}},
            **evaluate}
        doc["prices"] = JUDGE_PRICES
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


def test_batch_judge_grades_through_the_batch_api_and_reattaches_after_kill_9(eval_recipe, tmp_path):
    with FakeOpenAI(polls_to_finish=2) as fake:
        path = eval_recipe(fake.base_url, judge={"batch": True, "batch_poll_s": 0.05})
        assert _build(path, "--only", "curate").exit_code == 0
        fake.hold.set()  # no batch completes until the killed run is gone
        state = _kill_when_batch_pending(path, "runs/cost/.work/evaluate-*/batches/*.json")
        # the answers were asked one by one, then the judge's first batch (single grading) went out
        assert state.get("batch_id") == "batch-0000" and fake.created == ["batch-0000"], state
        assert fake.batches["batch-0000"]["status"] == "in_progress"
        answered = {k: fake.usage[f"/v1/chat/completions:{k}"] for k in ("calls", "prompt", "completion")}
        assert answered["calls"] == 2 * 3 * 2  # 2 models × 3 MT-Bench questions × 2 turns
        fake.hold.clear()

        r = _build(path)
        assert r.exit_code == 0, r.output
        assert "re-attached" in r.output
        # single grading re-attached to the killed run's batch, pairwise one more: nothing paid twice
        assert fake.created == ["batch-0000", "batch-0001"]
        assert fake.usage["/v1/chat/completions:calls"] == answered["calls"]  # the answers were not asked again
        uploads = [f.decode().splitlines() for f in fake.uploads()]
        assert [len(u) for u in uploads] == [2 * 3 * 2, 1 * 3 * 2 * 2]  # verdicts; pairwise: both orders

        out = tmp_path / "runs" / "cost" / "evaluate"
        folder = out / "benchmarks" / "mt_bench" / "model_judgment"
        single = [json.loads(x) for x in (folder / "fake-judge_single.jsonl").read_text().splitlines()]
        pair = [json.loads(x) for x in (folder / "fake-judge_pair.jsonl").read_text().splitlines()]
        # every verdict came back and parses: the judge's answers are the batch output's, verbatim
        served = {json.loads(x)["response"]["body"]["choices"][0]["message"]["content"]
                  for k, f in fake.files.items() if k.startswith("file-out") for x in f.decode().splitlines()}
        assert len(single) == 12 and all(1 <= r["score"] <= 10 and r["judgment"] in served for r in single)
        assert len(pair) == 6 and all(r["g1_winner"] in ("model_1", "model_2") and r["g2_winner"] in (
            "model_1", "model_2") and {r["g1_judgment"], r["g2_judgment"]} <= served for r in pair)

        usage = json.loads((out / "stats.json").read_text())["report"]["usage"]
        judge = usage["roles"]["judge"]
        assert judge["batch"] is True and judge["calls"] == fake.usage["batch:calls"] == 24
        assert judge["prompt_tokens"] == fake.usage["batch:prompt"] > 0
        assert judge["completion_tokens"] == fake.usage["batch:completion"] > 0
        # a Batch API verdict costs prices.batch_share (half) of the listed price
        assert judge["cost"] == pytest.approx((judge["prompt_tokens"] * 3.0 + judge["completion_tokens"] * 12.0) / 2e6,
                                             abs=1e-6)
        # the answers the killed run paid for were saved before the judge's batch went out
        a, b = usage["roles"]["answers:m-a"], usage["roles"]["answers:m-b"]
        assert a["batch"] is False and a["calls"] + b["calls"] == answered["calls"]
        assert a["prompt_tokens"] + b["prompt_tokens"] == answered["prompt"]
        assert a["completion_tokens"] + b["completion_tokens"] == answered["completion"]
        assert usage["tokens_this_run"] == judge["tokens"]


def test_failed_requests_of_a_completed_batch_are_resubmitted_on_the_rerun(tmp_path):
    """A batch completes with some request lines failed: the run that gets it reports them failed; a
    rerun asking the same requests re-attaches, and resubmits only those, in a new batch."""
    from openai import OpenAI

    from realchat.models.batch_api import run_batch

    bodies = [{"model": "fake-chat", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}
              for text in ("one question", "a FLAKY question", "third question", "another FLAKY one")]
    with FakeOpenAI(polls_to_finish=1) as fake:
        client = OpenAI(base_url=fake.base_url, api_key="none", max_retries=0)
        logs: list[str] = []

        def run():
            return run_batch(client, bodies, tmp_path / "batches", fake.base_url, "24h", 0.01, logs.append)

        fake.fail_marker = "FLAKY"
        first = run()
        assert ["error" in o for o in first] == [False, True, False, True]
        assert "HTTP 500" in first[1]["error"] and fake.created == ["batch-0000"]

        fake.fail_marker = None  # the server's trouble is over
        second = run()
        assert all("body" in o for o in second) and fake.created == ["batch-0000", "batch-0001"]
        assert [o["body"] for o in second[::2]] == [o["body"] for o in first[::2]]  # answered ones: not asked again
        resubmitted = [json.loads(x)["body"] for x in fake.uploads()[1].decode().splitlines()]
        assert resubmitted == [bodies[1], bodies[3]]
        assert any("2 of 4 requests failed" in line and "resubmitting" in line for line in logs)

        third = run()  # everything answered: re-attaches to both batches, submits nothing
        assert third == second and fake.created == ["batch-0000", "batch-0001"]
        client.close()


def test_batch_intent_summariser_one_batch_per_batch_size_and_reattaches_after_kill_9(recipe, tmp_path, own_cache):
    with FakeOpenAI(polls_to_finish=2) as fake:
        summarizer = {"backend": {"kind": "openai", "base_url": fake.base_url, "model": "fake-sum", "batch": True,
                                  "batch_poll_s": 0.05, "max_retries": 0},
                      "batch_size": 4, "max_new_tokens": 5}
        path = recipe(fake.base_url, intent={"source": "dataset", "dataset": "curate", "summarizer": summarizer})
        assert _build(path, "--only", "curate").exit_code == 0
        fake.hold.set()
        state = _kill_when_batch_pending(path, "runs/cost/.work/simulate-*/batches/*.json")
        assert state.get("batch_id") == "batch-0000" and fake.created == ["batch-0000"], state
        assert fake.batches["batch-0000"]["status"] == "in_progress"
        fake.hold.clear()

        r = _build(path)
        assert r.exit_code == 0, r.output
        assert "re-attached" in r.output
        out = tmp_path / "runs" / "cost" / "simulate"
        intents = [json.loads(x) for x in (out / "intents" / "intents.jsonl").read_text().splitlines()]
        n = len(intents)
        # one batch per 4 conversations, the first one the killed run's: each conversation asked once
        batches = -(-n // 4)
        assert n > 4 and fake.created == [f"batch-{i:04d}" for i in range(batches)]
        uploads = [f.decode().splitlines() for f in fake.uploads()]
        assert [len(u) for u in uploads] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
        # every conversation got its summary: the batch output's answer, verbatim (one line, ≤ 5 words)
        served = {json.loads(x)["response"]["body"]["choices"][0]["message"]["content"]
                  for k, f in fake.files.items() if k.startswith("file-out") for x in f.decode().splitlines()}
        assert all(i["intent"] and i["intent"] in served and i.get("key") for i in intents)
        assert len({i["id"] for i in intents}) == n
        roles = _stats(tmp_path)["usage"]["roles"]
        s = roles["intent_summarizer"]
        assert s["batch"] is True and s["calls"] == fake.usage["batch:calls"] == n
        assert s["prompt_tokens"] == fake.usage["batch:prompt"] > 0
        assert s["completion_tokens"] == fake.usage["batch:completion"] > 0
        assert s["cost"] == pytest.approx((s["prompt_tokens"] * 0.5 + s["completion_tokens"] * 1.0) / 2e6, abs=1e-6)
        assert roles["answerer"]["batch"] is False and fake.usage["/v1/chat/completions:calls"] == roles[
            "answerer"]["calls"] > 0  # the answerer was not batched: only the summariser's calls went in batches


def test_sft_budget_stops_the_intent_summariser_and_a_rerun_resumes(make_recipe, write_json_array, sharegpt_records,
                                                                    tiny_model_dir, tmp_path, own_cache):
    from realchat.intents import cache_path

    with FakeOpenAI() as fake:
        path = make_recipe(write_json_array(sharegpt_records[:12]), filters=[{"op": "shape"}], name="im")
        doc = yaml.safe_load(path.read_text())
        doc["steps"]["usergpt"] = {
            "kind": "sft", "loss_on": "user", "base_model": str(tiny_model_dir), "dataset": "curate",
            "max_length": 512, "max_steps": 1, "per_device_train_batch_size": 2, "save_steps": 1,
            "max_tokens_total": 1,
            "intent": {"source": "model", "summarizer": {
                "backend": {"kind": "openai", "base_url": fake.base_url, "model": "fake-sum", "max_retries": 0},
                "batch_size": 4, "max_new_tokens": 5}}}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

        # the first batch of summaries spends the budget: the step stops before the second, exit 3
        r = _build(path)
        assert r.exit_code == 3, r.output
        text = " ".join(r.output.split())
        assert "steps.usergpt.max_tokens_total" in text and "intent summaries written so far are kept" in text
        assert not (tmp_path / "runs" / "im" / "usergpt").exists()  # nothing trained, nothing written
        assert fake.usage["/v1/chat/completions:calls"] == 4 and len(cache_path().read_text().splitlines()) == 4

        r = _build(path)  # the same limit: what the stopped run spent counts, nothing is asked
        assert r.exit_code == 3 and fake.usage["/v1/chat/completions:calls"] == 4, r.output

        # a higher limit resumes (budgets are not in the fingerprint): only the rest is summarised
        r = _build(path, "--set", "steps.usergpt.max_tokens_total=100000000")
        assert r.exit_code == 0, r.output
        it = json.loads((tmp_path / "runs" / "im" / "usergpt" / "stats.json").read_text())["intents"]
        n = it["with_intent"] + it["without_intent"]
        assert n > 4 and it["summarized_this_run"] == n - 4 == fake.usage["/v1/chat/completions:calls"] - 4
        s = it["usage"]["roles"]["intent_summarizer"]
        assert s["calls"] == n and s["prompt_tokens"] == fake.usage["/v1/chat/completions:prompt"]
        assert s["completion_tokens"] == fake.usage["/v1/chat/completions:completion"]
        assert 0 < it["usage"]["tokens_this_run"] < it["usage"]["total_tokens"]  # every run of the step counted

        # a budget on an sft step without a served summariser would bound nothing: refused
        doc["steps"]["usergpt"].pop("intent")
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        r = _build(path)
        assert r.exit_code == 2 and "steps.usergpt" in r.output and "intent summariser" in " ".join(r.output.split())
