"""Step kind ``simulate``: UserGPT (or a baseline simulator) talks to an answerer → the RealChat dataset.

Conversations are appended, as they finish, to ``parts.jsonl`` in the step's work folder, one line
each with the sha256 of its record. A crash, ``kill -9`` or Ctrl-C loses only the conversations in
flight: the rerun reads the part file, drops a torn last line (bad checksum), keeps the first complete
record of a session id written twice (two runs racing on one work folder), forgets sessions that
failed (so they are retried), skips the session ids already there and simulates the rest. Session ids
are fixed by position (``<fp8>-000042``), so there are no duplicates and no gaps.

A run whose output would be useless fails instead of publishing it: no conversation with a complete
round, or more than ``max_failed_share`` of the sessions failed (an answerer rejecting every request).
The error shows the first (redacted) backend errors; nothing is written or published.

Output: ``data/`` (conversations with at least one complete round), ``rejected/`` (sessions that
ended before one: failed requests, seeds too long, an empty first question — with the reason),
``sharegpt/realchat.jsonl`` (the paper's record format), ``stats.json``, the card, ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from realchat.engine.context import StepContext
from realchat.errors import RealChatError, writing
from realchat.files import atomic_write_text
from realchat.intents import DEFAULT_INTENT_TEMPLATE, SimulationIntents, read_intent_file, summarize, write_intents
from realchat.models import served_identity
from realchat.models.backends import Backend, LocalBackend, TemplateBackend
from realchat.models.usage import BudgetReached, ServedBudget
from realchat.recipe.base import DEFAULT_MODEL, DEFAULT_USER_SYSTEM_PROMPT, StepConfig, Strict
from realchat.recipe.refs import DatasetRef
from realchat.redact import redact
from realchat.simulation.simulator import Session, Simulation, SimulationSettings
from realchat.steps.base import StepKind, StepResult, data_configs

MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


class SeedConfig(Strict):
    """Where seeded conversations take their first question (and answer) from."""

    #: Real conversations, e.g. ``{step: curate, split: held_out}`` (first human turns no model saw).
    dataset: DatasetRef
    #: Also take the first answer (question + answer seed) instead of letting the answerer reply.
    with_answer: bool = False


class SimulateConfig(StepConfig, SimulationSettings, ServedBudget):
    """A simulator (UserGPT or a baseline) asks, an assistant answers, for many multi-turn conversations."""

    kind: Literal["simulate"] = "simulate"
    #: The model writing the user turns: ``usergpt`` names an sft step with ``loss_on: user`` (or
    #: any such model); ``roleplay`` and ``magpie`` an instruct model.
    simulator_backend: TemplateBackend = LocalBackend()
    #: The assistant answering the simulator: a local model, an OpenAI-compatible endpoint or vLLM.
    answerer: Backend = LocalBackend(model=DEFAULT_MODEL)
    #: `free`: the simulator writes the first question; `seeded`: it comes from `seeds`.
    mode: Literal["free", "seeded"] = "free"
    #: Required for ``mode: seeded``.
    seeds: SeedConfig | None = None
    #: Conversations (sessions) to simulate.
    conversations: int = Field(200, ge=1)
    #: The simulator's system prompt (``usergpt``: as trained; null = the sft step's).
    user_system_prompt: str | None = None
    #: End-of-conversation marker the simulator writes (null = the sft step's).
    end_marker: str | None = None
    #: Sampling seed of this step; null = the recipe's `seed`.
    seed: int | None = Field(None, ge=0, lt=2**32)
    #: Also write the conversations as ShareGPT JSONL (``sharegpt/realchat.jsonl``).
    export_sharegpt: bool = True
    #: The step fails (and publishes nothing) when more than this share of its sessions failed.
    max_failed_share: float = Field(0.5, ge=0, le=1)
    #: Intent conditioning (``simulator: usergpt``): one goal per session in the simulator's system
    #: prompt, from a file or from real conversations; null = off.
    intent: SimulationIntents | None = None

    @model_validator(mode="after")
    def _seeds_for_seeded(self) -> "SimulateConfig":
        if self.mode == "seeded" and self.seeds is None:
            raise ValueError("mode seeded needs seeds: {dataset: …} (e.g. {step: curate, split: held_out})")
        if self.intent is not None and self.simulator != "usergpt":
            raise ValueError("intent conditions the trained simulator: it needs simulator: usergpt")
        if self.simulator_backend.kind == "openai" and self.simulator_backend.batch:
            raise ValueError("simulator_backend: batch: true sends chat completions through the Batch API; the "
                             "simulator writes user turns as text completions, one turn at a time: leave it "
                             "out here (the answerer and the intent summariser can batch)")
        if self.simulator_backend.kind == "openai" and self.simulator_backend.tokenizer is None:
            raise ValueError("simulator_backend kind openai needs tokenizer: the served model's folder, Hub id "
                             "or sft step (its chat template renders the simulator's prompt)")
        return self


def settings_id(cfg: SimulateConfig) -> str:
    keys = cfg.model_dump(mode="json", include={"simulator", "user_sampling", "assistant_sampling",
                                                  "assistant_system_prompt", "max_rounds", "context_budget",
                                                  "min_rounds", "repeat_similarity", "max_resamples",
                                                  "truncated_answers"})
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


# -- part file ------------------------------------------------------------------------------------


def read_parts(path: Path, retry_failed: bool = True) -> list[dict[str, Any]]:
    """Complete records of the part file, repaired in place.

    A torn or corrupt line (a crash mid-write) ends the file; a session id written twice keeps its
    first complete record; with ``retry_failed``, sessions that failed are forgotten so the rerun
    simulates them again. When anything was dropped the file is rewritten atomically, so appends
    start on a clean line and the ids in the file are unique.
    """
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    seen: set[str] = set()
    lines: list[bytes] = []
    dropped = False
    with path.open("rb") as f:
        for line in f:
            try:
                item = json.loads(line)
                body = json.dumps(item["record"], sort_keys=True, ensure_ascii=False)
                if hashlib.sha256(body.encode()).hexdigest() != item["sha256"]:
                    raise ValueError("checksum")
                sid = item["record"]["session_id"]
            except (ValueError, KeyError, TypeError):
                dropped = True
                break
            if sid in seen or (retry_failed and item["record"].get("stop_reason") == "failed"):
                dropped = True
                continue
            seen.add(sid)
            out.append(item["record"])
            lines.append(line if line.endswith(b"\n") else line + b"\n")
    if dropped:
        atomic_write_text(path, b"".join(lines).decode("utf-8"))
    return out


class PartWriter:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        body = json.dumps(record, sort_keys=True, ensure_ascii=False)
        line = json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest(), "record": record},
                          ensure_ascii=False)
        with writing(self.path):  # a full disk names the part file (a torn last line is dropped on resume)
            self.f.write(line + "\n")
            self.f.flush()

    def close(self) -> None:
        with writing(self.path):
            self.f.close()


# -- seeds and backends ---------------------------------------------------------------------------


def load_seeds(ctx: StepContext, cfg: SimulateConfig) -> list[dict[str, Any]]:
    """First questions (and answers) for seeded mode, from the conversations ``seeds.dataset`` names."""
    assert cfg.seeds is not None
    from realchat.data import opens_conversation

    # a seed is a real conversation's first question: its first segment, never a later one that
    # split started with a follow-up ("continue", "ok write it")
    convs = [c for c in ctx.conversations("seeds.dataset") if opens_conversation(c)]
    seeds = []
    for c in convs:
        msgs = [m for m in c["messages"] if m["role"] != "system"]
        if not msgs or msgs[0]["role"] != "user":
            continue
        seed = [msgs[0]]
        if cfg.seeds.with_answer and len(msgs) > 1 and msgs[1]["role"] == "assistant":
            seed.append(msgs[1])
        seeds.append({"id": c["id"], "messages": seed})
    if not seeds:
        from realchat.errors import RecipeError

        raise RecipeError("no seed conversations starting with a user turn", file=str(ctx.loaded.path),
                          field=ctx.key("seeds.dataset"))
    return seeds


def simulator_prompt_and_marker(ctx: StepContext, cfg: SimulateConfig) -> tuple[str | None, str | None]:
    """The simulator's system prompt and end marker: as the recipe says, else as UserGPT was trained."""
    b = cfg.simulator_backend
    trained_prompt, trained_marker = ctx.trained_simulator(b.tokenizer if b.kind == "openai" and b.tokenizer else b.model)
    prompt = cfg.user_system_prompt if cfg.user_system_prompt is not None else trained_prompt
    marker = cfg.end_marker if cfg.end_marker is not None else trained_marker
    return prompt, marker


def load_intents(ctx: StepContext, cfg: SimulateConfig, out: Path | None = None) -> tuple[list[str], dict[str, str], str]:
    """(intents the sessions take in turn, intents by conversation id, the template) for intent
    conditioning. By id: a seeded session whose seed conversation has a goal in ``intent.dataset``
    gets that goal (its first question and its goal agree). The template is the recipe's, else the
    one the simulator's sft step trained with, else the default."""
    it = cfg.intent
    assert it is not None
    by_id: dict[str, str] = {}
    if it.source == "file":
        assert it.file is not None
        from realchat.recipe.refs import resolve_local

        with ctx.blame("intent.file"):
            intents = read_intent_file(resolve_local(it.file, ctx.base_dir))
    else:
        from realchat.data import opens_conversation

        # one goal per real conversation (its first segment), as seeds are one per conversation
        convs = [c for c in ctx.conversations("intent.dataset") if opens_conversation(c)]
        missing = [c for c in convs if not c.get("intent")]
        if missing and it.summarizer is not None:
            summarizer = it.summarizer
            meter = ctx.meter()
            meter.role("intent_summarizer", summarizer.backend)
            try:
                got, _ = summarize(missing, summarizer,
                                   lambda: ctx.open_backend(summarizer.backend, "intent.summarizer.backend"),
                                   log=ctx.console.print, meter=meter)
            except BudgetReached as e:  # the summaries written so far stay cached: the rerun asks only the rest
                e.file, e.field = str(ctx.loaded.path), ctx.key(e.field or "max_cost")
                raise
            finally:
                meter.save()
            for c, intent in zip(missing, got):
                c["intent"] = intent
        intents = [c["intent"] for c in convs if c.get("intent")]
        by_id = {c["id"]: c["intent"] for c in convs if c.get("intent")}
        if out is not None:  # the goals the sessions draw from, kept with the output (config ``intents``)
            write_intents(out, convs, it.summarizer)
        if not intents:
            from realchat.errors import RecipeError

            raise RecipeError(f"none of the {len(convs):,} conversations of intent.dataset has an intent",
                              file=str(ctx.loaded.path), field=ctx.key("intent.dataset"),
                              hint="data with an 'intent' column or key, or intent.summarizer: {backend: …}")
    b = cfg.simulator_backend
    ref = b.tokenizer if b.kind == "openai" and b.tokenizer else b.model
    trained = ctx.stats_of(ref).get("intent_template") if ref in ctx.loaded.recipe.steps else None
    return intents, by_id, it.template or trained or DEFAULT_INTENT_TEMPLATE


def simulation_batching(model: Any, answerer: Any = None) -> tuple[str, int]:
    """How sessions are fed to the loop: ``pipelined`` (both roles served: each session moves on as
    soon as its own turn is done, as many at once as the servers take), ``refill`` (a finished
    session's place goes to the next one at once: ``batch_size`` in flight locally, a large pool for
    vLLM's scheduler), ``waves`` of ``4 × batch_size`` run to their end, or ``rounds`` (an answerer
    with ``batch: true``: every session in lock-step, each round's answers one Batch API batch).

    Waves on a local CPU model: there a decode step costs in proportion to its rows, so a draining
    wave wastes little, while a refilled batch mixes short and long conversations and pays for their
    left padding (bench_simulate.py: refilled 0.83x of waves at batch 16, 2-core CPU). On a GPU a
    decode step costs the same for 1 or 128 rows (launch-bound), so keeping the batch full is what
    counts.
    """
    served = [getattr(b, "cfg", None) for b in (model, answerer) if b is not None]
    if getattr(getattr(answerer, "cfg", None), "batch", False):
        # the Batch API answers a whole file at once: every live session's turn k in one batch (lock-step rounds)
        return "rounds", 0
    if answerer is not None and all(getattr(c, "kind", None) == "openai" for c in served):
        return "pipelined", min(c.max_concurrency for c in served)
    device = getattr(model, "device", None)
    if device == "cpu":
        return "waves", 4 * int(getattr(model, "batch_size", 16))
    return "refill", int(getattr(model, "batch_size", None) or getattr(getattr(model, "cfg", None),
                                                                    "max_concurrency", None) or 256)


# -- the step -------------------------------------------------------------------------------------


class Simulate(StepKind):
    name = "simulate"
    Config = SimulateConfig
    summary = "a simulator asks, an assistant answers → multi-turn conversations (RealChat)"

    def card_metadata(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Both sides of every conversation were written by models."""
        return {"annotations_creators": ["machine-generated"], "language_creators": ["machine-generated"],
                "tags": ["synthetic"]}

    def estimate(self, config: Any) -> list[Any]:
        return estimate_simulation(config)

    def run(self, ctx: StepContext, out: Path) -> StepResult:
        return StepResult(stats=simulate(ctx, ctx.config, out), manifest={"configs": data_configs(out)})  # type: ignore[arg-type]


def estimate_simulation(cfg: SimulateConfig) -> list[Any]:
    """Calls and tokens per role if every session ran ``max_rounds`` rounds (or as many as the context
    budget allows) with every turn at its token limit and no resample: an upper estimate of the usual
    case (sessions that end early ask less, resamples ask more). Turn k's prompt holds the k-1
    rounds before it."""
    from realchat.models.usage import RoleEstimate, rough_tokens

    n, user, answer = cfg.conversations, cfg.user_sampling.max_new_tokens, cfg.assistant_sampling.max_new_tokens
    system_user = rough_tokens(cfg.user_system_prompt or DEFAULT_USER_SYSTEM_PROMPT) + 10
    fits = max(1, (cfg.context_budget - system_user - user) // (user + answer) + 1)
    rounds = min(cfg.max_rounds or fits, fits)
    history = (user + answer) * rounds * (rounds - 1) // 2  # the rounds before turn k, summed over k
    seeded = 1 if cfg.mode == "seeded" else 0  # the seed is the first question
    asked = n * (rounds - seeded)
    why = f"{rounds} round{'s' if rounds != 1 else ''} per session" + (
        " (what the context budget holds)" if cfg.max_rounds is None or fits < cfg.max_rounds else "")
    out = [RoleEstimate("simulator", cfg.simulator_backend, asked, n * (rounds * system_user + history),
                        asked * user, why)]
    system_answer = rough_tokens(cfg.assistant_system_prompt) + 10
    answered = n * (rounds - (1 if cfg.seeds is not None and cfg.seeds.with_answer else 0))
    out.append(RoleEstimate("answerer", cfg.answerer, answered, n * (rounds * (system_answer + user) + history),
                            answered * answer, why))
    if cfg.intent is not None and cfg.intent.summarizer is not None:
        sm = cfg.intent.summarizer
        per_call = rough_tokens(sm.prompt) + rough_tokens("x" * sm.max_chars)
        out.append(RoleEstimate("intent_summarizer", sm.backend, None, None, None,
                                f"one call per conversation of intent.dataset without an intent (cached ones "
                                f"are free): up to {per_call:,} prompt and {sm.max_new_tokens} completion tokens each"))
    return out


def simulate(ctx: StepContext, cfg: SimulateConfig, out: Path) -> dict[str, Any]:
    import torch

    started = time.perf_counter()
    fingerprint = ctx.fingerprint
    seed = cfg.seed if cfg.seed is not None else ctx.seed
    ids = [f"{fingerprint[:8]}-{i:06d}" for i in range(cfg.conversations)]
    seeds = load_seeds(ctx, cfg) if cfg.mode == "seeded" else []
    rng = random.Random(seed)
    if seeds:
        rng.shuffle(seeds)

    work = ctx.work_dir()
    parts_path = work / "parts.jsonl"
    done = read_parts(parts_path)
    done_ids = {r["session_id"] for r in done}
    todo = [i for i, sid in enumerate(ids) if sid not in done_ids]
    if done:
        ctx.console.print(f"{ctx.name}: resuming, {len(done):,} conversations already finished, {len(todo):,} to go")
    torch.manual_seed(seed + len(done))

    sim_backend = ctx.open_backend(cfg.simulator_backend, "simulator_backend")
    same = (cfg.answerer.kind == cfg.simulator_backend.kind != "openai"
            and cfg.answerer.model == cfg.simulator_backend.model)
    answerer = sim_backend if same else ctx.open_backend(cfg.answerer, "answerer")
    user_prompt, marker = simulator_prompt_and_marker(ctx, cfg)
    intents, intent_of, template = load_intents(ctx, cfg, out) if cfg.intent else ([], {}, None)
    if intents:
        random.Random(seed + 1).shuffle(intents)  # its own draws: the seeds' order stays as it was
    sid = settings_id(cfg)

    writer = PartWriter(parts_path)
    finished = list(done)
    bar_total = len(ids)

    def on_finish(s: Session) -> None:
        rec = s.record(sid)
        rec["error"] = redact(rec["error"], [getattr(answerer, "key", ""), getattr(sim_backend, "key", "")])
        writer.write(rec)
        finished.append(rec)

    def sessions() -> Any:
        for i in todo:
            seed_conv = seeds[i % len(seeds)] if seeds else None
            msgs = [dict(m) for m in seed_conv["messages"]] if seed_conv else []
            yield Session(ids[i], cfg.mode, seed_conv["id"] if seed_conv else None, msgs,
                          rounds=1 if len(msgs) == 2 else 0, finish_reasons=[None] if len(msgs) == 2 else [],
                          intent=(intent_of.get(seed_conv["id"]) if seed_conv else None)
                          or (intents[i % len(intents)] if intents else None))

    meter = ctx.meter()
    meter.role("simulator", cfg.simulator_backend)
    meter.role("answerer", cfg.answerer)
    sim = Simulation(cfg, sim_backend, answerer, user_prompt if cfg.simulator == "usergpt" else None,
                     marker if cfg.simulator == "usergpt" else None, on_finish, intent_template=template,
                     meter=meter)
    gen_started = time.perf_counter()
    try:
        batching, capacity = simulation_batching(sim_backend, answerer)
        # a bar on a terminal, a timed plain line in a job log (realchat.progress)
        with ctx.progress_counter("simulate", total=bar_total, unit="sessions", completed=len(done)) as counter:
            def progress(s: Session) -> None:
                on_finish(s)
                elapsed = time.perf_counter() - gen_started
                counter.advance(1, tokens_per_s=round(sim.generated_tokens / max(elapsed, 1e-9), 1))

            def heartbeat(tokens: int) -> None:
                # a job log hears from a long generation at the progress interval, whatever finished
                with beat_lock:  # pipelined sessions report from several threads
                    live_tokens[0] += tokens
                    elapsed = time.perf_counter() - gen_started
                    counter.update(tokens_generated=live_tokens[0],
                                   tokens_per_s=round(live_tokens[0] / max(elapsed, 1e-9), 1))

            live_tokens, beat_lock = [0], threading.Lock()
            for backend in {id(sim_backend): sim_backend, id(answerer): answerer}.values():
                backend.on_tokens = heartbeat
            sim.on_finish = progress
            if batching == "pipelined":
                sim.run_pipelined(sessions(), capacity)
            elif batching == "refill":
                sim.run(sessions(), capacity=capacity)
            elif batching == "rounds":
                sim.run(sessions())
            else:
                pending = list(sessions())
                for k in range(0, len(pending), capacity):
                    sim.run(pending[k : k + capacity])
    except BudgetReached as e:
        e.file, e.field = str(ctx.loaded.path), ctx.key(e.field or "max_cost")
        e.message += f" ({len(finished):,} of {len(ids):,} conversations in the part file)"
        raise
    finally:
        writer.close()
        meter.save()  # what this run spent counts towards the budget of the next
    gen_seconds = time.perf_counter() - gen_started

    records = sorted(finished, key=lambda r: r["session_id"])
    assert [r["session_id"] for r in records] == ids, "every session id exactly once"
    kept = [r for r in records if r["rounds"] >= 1]
    rejected = [r for r in records if r["rounds"] < 1]
    check_usable(ctx, cfg, records, kept)
    _write(out, kept, rejected, cfg)
    stats = describe(kept, rejected, sim_backend)
    stats.update(generated_tokens_this_run=sim.generated_tokens, generation_seconds=round(gen_seconds, 1),
                 tokens_per_second=round(sim.generated_tokens / gen_seconds, 1) if gen_seconds else None,
                 resumed_with=len(done), seconds=round(time.perf_counter() - started, 1),
                 settings_id=sid, simulator=cfg.simulator, mode=cfg.mode, batching=batching,
                 simulator_model=cfg.simulator_backend.model, min_rounds=cfg.min_rounds,
                 truncated_answers_rule=cfg.truncated_answers, max_failed_share=cfg.max_failed_share,
                 answerer_model=getattr(cfg.answerer, "model", None), user_system_prompt=user_prompt,
                 end_marker=marker, chat_formats=format_notes(sim_backend, answerer, sim.simulator_role))
    # the models behind the conversations, served ones included (lineage of what wrote the data)
    stats["models"] = {"simulator": served_identity(cfg.simulator_backend), "answerer": served_identity(cfg.answerer),
                       **({"intent_summarizer": served_identity(cfg.intent.summarizer.backend)}
                          if cfg.intent and cfg.intent.summarizer else {})}
    # tokens (and cost, with prices) of every role, all runs of the step together
    stats["usage"] = meter.report()
    stats["repeated_contexts"] = repeated_contexts(records, cfg.mode == "seeded", cfg.user_sampling.temperature,
                                                   cfg.assistant_sampling.temperature)
    for role, figures in stats["repeated_contexts"].items():
        if figures.get("warning"):
            ctx.console.print(f"[yellow]warning:[/yellow] {ctx.name}: {figures['warning']}")
    if seeds:
        # fewer seeds than sessions: first questions are reused (each about sessions/seeds times)
        stats["seeds"] = {"available": len(seeds), "sessions_per_seed": round(len(ids) / len(seeds), 2)}
    if cfg.intent:
        stats["intents"] = {"source": cfg.intent.source, "distinct": len(set(intents)), "template": template,
                            "sessions_with_intent": sum(1 for r in kept if r.get("intent"))}
    return stats


COLUMNS = {"session_id": pl.String, "mode": pl.String, "seed_id": pl.String, "messages": MESSAGES,
           "rounds": pl.Int32, "stop_reason": pl.String, "error": pl.String, "settings_id": pl.String,
           "finish_reasons": pl.List(pl.String), "repeat_resamples": pl.Int32,
           "end_marker_resamples": pl.Int32, "truncated_answers": pl.Int32, "intent": pl.String,
           "user_finish_reasons": pl.List(pl.String), "turn_stops": pl.List(pl.String)}


def _frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    # records from an older part file lack the newer columns: null lists, zero counts
    defaults = {"finish_reasons": None, "repeat_resamples": 0, "end_marker_resamples": 0, "truncated_answers": 0,
                "intent": None, "user_finish_reasons": None, "turn_stops": None}
    rows = [{**defaults, **r} for r in records]
    return pl.DataFrame(rows, schema=COLUMNS)


def check_usable(ctx: StepContext, cfg: SimulateConfig, records: list[dict[str, Any]],
                 kept: list[dict[str, Any]]) -> None:
    """Fail (before anything is written) when the run produced nothing usable or too many failures."""
    failed = [r for r in records if r["stop_reason"] == "failed"]
    share = len(failed) / len(records) if records else 0.0
    if kept and share <= cfg.max_failed_share:
        return
    # the role that failed most (its errors open with its recipe key: simulation.simulator.failed_by)
    roles = [next((k for k in ("simulator_backend", "answerer") if (r.get("error") or "").startswith(k + ": ")),
                  "answerer") for r in failed]
    blamed = max(("simulator_backend", "answerer"), key=roles.count) if roles else "simulator_backend"
    firsts: list[str] = []
    for r in failed:
        e = redact(r.get("error")) or "(no error text)"
        if e not in firsts:
            firsts.append(e)
        if len(firsts) == 3:
            break
    why = (f"{len(failed)} of {len(records)} sessions failed ({share:.0%}, more than max_failed_share "
           f"{cfg.max_failed_share:.0%})" if share > cfg.max_failed_share
           else f"no session has a complete round ({len(records)} sessions)")
    shown = "".join(f"\n  - {e}" for e in firsts)
    raise RealChatError(f"{why}; nothing written or published. First errors:{shown}" if firsts
                        else f"{why}; nothing written or published",
                        file=str(ctx.loaded.path), field=ctx.key(blamed),
                        hint="a rerun retries the failed sessions and keeps the finished ones")


def _write(out: Path, kept: list[dict[str, Any]], rejected: list[dict[str, Any]], cfg: SimulateConfig) -> None:
    (out / "data").mkdir(parents=True)
    (out / "rejected").mkdir()
    _frame(kept).write_parquet(out / "data" / "train-00000-of-00001.parquet", compression="zstd")
    _frame(rejected).write_parquet(out / "rejected" / "train-00000-of-00001.parquet", compression="zstd")
    if cfg.export_sharegpt:
        (out / "sharegpt").mkdir()
        rows = [{"session_id": r["session_id"], "num_of_rounds": r["rounds"],
                 "conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                                   for m in r["messages"]]} for r in kept]
        with (out / "sharegpt" / "realchat.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        # the same rows as the repo's `sharegpt` config: parquet, because one builder reads a repo's configs
        pl.DataFrame(rows, schema={"session_id": pl.String, "num_of_rounds": pl.Int32, "conversations": pl.List(
            pl.Struct({"from": pl.String, "value": pl.String}))}).write_parquet(
            out / "sharegpt" / "train-00000-of-00001.parquet", compression="zstd")


def describe(kept: list[dict[str, Any]], rejected: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    """§4 shape statistics (counted with the simulator's tokenizer), stop reasons, languages."""
    from realchat.curation.langid import LanguageIdentifier
    from realchat.evaluation.statistics import shape_statistics

    count = getattr(model, "count", None)
    counter = (lambda texts: [count(t) for t in texts]) if count else (lambda texts: [len(t.split()) for t in texts])
    shape = shape_statistics([r["messages"] for r in kept], counter)
    user_texts = [m["content"] for r in kept for m in r["messages"] if m["role"] == "user"]
    stop: dict[str, int] = {}
    for r in kept + rejected:
        stop[r["stop_reason"]] = stop.get(r["stop_reason"], 0) + 1
    langs: dict[str, int] = {}
    if user_texts:
        labels, _conf = LanguageIdentifier.shared().predict([" ".join(u.split()) for u in user_texts], clean=True)
        for lang in labels:
            langs[lang] = langs.get(lang, 0) + 1
    return {
        "sessions": len(kept) + len(rejected),
        "rows": len(kept),
        "kept_rows": len(kept),
        "rejected_sessions": len(rejected),
        **{k: v for k, v in shape.items() if k != "conversations"},
        "stop_reasons": dict(sorted(stop.items(), key=lambda kv: -kv[1])),
        "failed": stop.get("failed", 0),
        # per assistant turn of the kept conversations: ended by the model, or cut at the token limit
        "finish_reasons": _count(f for r in kept for f in (r.get("finish_reasons") or []) if f is not None),
        # the same for the user turns the simulator wrote
        "user_finish_reasons": _count(f for r in kept for f in (r.get("user_finish_reasons") or []) if f is not None),
        # what ended each generated turn, per role: the template's turn end (or EOS) when the model stopped
        "turn_stops": {role: _count(stop for r in kept for m, stop in zip(r["messages"], r.get("turn_stops") or [])
                                    if m["role"] == role and stop is not None) for role in ("user", "assistant")},
        # every answer cut at the token limit, whatever ``truncated_answers`` did with it
        "truncated_answers": sum(r.get("truncated_answers", 0) for r in kept + rejected),
        "trimmed_answers": sum((r.get("finish_reasons") or []).count("trimmed") for r in kept),
        "dropped_truncated_rounds": stop.get("truncated_answer", 0),
        "repeat_resamples": sum(r.get("repeat_resamples", 0) for r in kept + rejected),
        "end_marker_resamples": sum(r.get("end_marker_resamples", 0) for r in kept + rejected),
        "languages": dict(sorted(langs.items(), key=lambda kv: -kv[1])),
        "token_counter": "simulator tokenizer" if count else "whitespace words",
    }


def repeated_contexts(records: list[dict[str, Any]], seeded: bool, user_temperature: float,
                      assistant_temperature: float) -> dict[str, dict[str, Any]]:
    """Per role, whether sampling happened: the contexts that more than one session gave the model
    (the same intent and conversation so far; in free mode every session's first user turn, when the
    intents repeat or there are none), and how many of them got the very same text every time.

    With a temperature above 0, identical draws everywhere mean the model decoded greedily: a served
    model that ignores the request's ``temperature`` (``transformers serve`` with continuous batching
    does unless the model's generation config samples) makes every session with the same start the
    same session. Said once per role, with a ``warning``, where that is what the data shows."""
    import json as _json

    outs: dict[str, dict[str, list[str]]] = {"simulator": {}, "answerer": {}}
    for r in records:
        msgs = r["messages"]
        for i, m in enumerate(msgs):
            if seeded and i == 0:
                continue  # the seed is given, not sampled
            role = "simulator" if m["role"] == "user" else "answerer"
            # the simulator sees the session's goal; the answerer only the conversation
            context = _json.dumps([r.get("intent") if role == "simulator" else None, msgs[:i]], ensure_ascii=False)
            outs[role].setdefault(context, []).append(m["content"])
    report: dict[str, dict[str, Any]] = {}
    for role, temperature in (("simulator", user_temperature), ("answerer", assistant_temperature)):
        repeated = [texts for texts in outs[role].values() if len(texts) > 1]
        same = sum(1 for texts in repeated if len(set(texts)) == 1)
        draws = sum(len(texts) for texts in repeated)
        figures: dict[str, Any] = {"contexts_repeated": len(repeated), "draws": draws, "all_identical": same,
                                   "temperature": temperature}
        if temperature > 0 and repeated and same == len(repeated) and draws >= 3:
            figures["warning"] = (f"the {role} wrote the same text every time it was given the same context "
                                  f"({len(repeated)} contexts, {draws} draws) although temperature is {temperature}: "
                                  "it decodes greedily and sessions with the same start are the same session (a "
                                  "served model may ignore the request's temperature: transformers serve with "
                                  "continuous batching does unless the model's generation config samples)")
        report[role] = figures
    return report


def format_notes(simulator: Any, answerer: Any, simulator_role: str) -> dict[str, Any]:
    """Per model, the turn ends it stops at (for the role it writes) and how often its chat format had
    to lay a conversation out for the template (a system prompt folded, turns merged, an empty user
    turn added); a served model rendered by its server says so."""
    out: dict[str, Any] = {}
    for name, backend, role in (("simulator", simulator, simulator_role), ("answerer", answerer, "assistant")):
        fmt = getattr(backend, "format", None)
        out[name] = ({"template": "the server's"} if fmt is None else
                     {"writes": role, "stop_strings": fmt.stop_strings(role), "adaptations": dict(fmt.notes)})
    return out


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
