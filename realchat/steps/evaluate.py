"""Step kind ``evaluate``: dataset statistics, simulator fidelity and assistant benchmarks → a report.

Three independent parts, each optional in the recipe:

1. **Dataset statistics** (the paper's §4) for every dataset the recipe lists (curated, simulated,
   any baseline file): rounds, tokens per utterance and conversation, user-turn lengths, languages,
   MTLD, distinct-n, topic and first-turn diversity.
2. **Simulator fidelity** (``realchat.evaluation.fidelity``): perplexity on held-out real user turns (simulator
   vs the base model prompted as the user), Fréchet distance and a real-vs-simulated classifier in
   embedding space, how conversations end, rounds against the real ones.
3. **Benchmarks** (``realchat.evaluation.benchmarks``): MT-Bench / Vicuna-Bench answers and LLM-judge verdicts
   in FastChat's file formats.

Output: ``report.md`` (also the card's body), ``stats.json`` (every figure), ``data/metrics.jsonl``
(one row per figure, the dataset's default config), ``plots/*.png``, ``benchmarks/<bench>/model_answer``
and ``model_judgment`` (FastChat files, configs ``answers``, ``judgments_single``, ``judgments_pair``).

Answers and judgments are kept in the step's work folder as each model or judge pass finishes, so an
interrupted run resumes without regenerating them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from realchat.data import Conversation
from realchat.engine.context import StepContext
from realchat.evaluation.benchmarks import BenchmarkConfig
from realchat.evaluation.fidelity import FidelityConfig
from realchat.models.usage import BudgetReached, ServedBudget
from realchat.recipe.base import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL, Produces, Slug, StepConfig, Strict
from realchat.recipe.refs import DatasetRef, ModelRef, resolve_local
from realchat.steps.base import StepKind, StepResult


class EvalDataset(Strict):
    """A conversation dataset to describe (and, named in ``fidelity``, to compare)."""

    #: Label in the report (``sharegpt``, ``usergpt``, ``roleplay``, …).
    name: Slug
    #: A step name (its train split), ``{step: curate, split: held_out}``, a file or a Hub id.
    dataset: DatasetRef


class EvaluateConfig(StepConfig, ServedBudget):
    """Dataset statistics, simulator fidelity and assistant benchmarks → one comparison report."""

    kind: Literal["evaluate"] = "evaluate"
    produces: ClassVar[Produces] = "report"
    #: Conversation datasets to describe: each a `name` (its label) and a `dataset` reference.
    datasets: list[EvalDataset] = Field(default_factory=list)
    #: Conversations per dataset for the statistics (a hash sample by the recipe's seed); null = all.
    #: A real conversation ``split`` cut counts once, by its first segment (see :func:`load_dataset_for_eval`).
    max_conversations: int | None = Field(500, ge=1)
    #: Sample the compared datasets down to the smallest one's size (the paper compares at equal
    #: size). The fidelity's real reference (``fidelity.real``) is not one of them: it keeps up to
    #: ``max_conversations`` and does not floor the others.
    equal_size: bool = False
    #: Tokenizer for token statistics.
    tokenizer: ModelRef = DEFAULT_MODEL
    #: Sentence-embedding model for topic diversity and the fidelity distances (sentence-transformers).
    embedding_model: ModelRef = DEFAULT_EMBEDDING_MODEL
    #: Simulator fidelity against held-out real conversations; null = skip.
    fidelity: FidelityConfig | None = None
    #: MT-Bench / Vicuna-Bench answers and LLM-judge grades; null = skip.
    benchmark: BenchmarkConfig | None = None

    @field_validator("datasets")
    @classmethod
    def _unique(cls, v: list[EvalDataset]) -> list[EvalDataset]:
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"dataset names must be unique; repeated: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _names_resolve(self) -> "EvaluateConfig":
        names = [d.name for d in self.datasets]
        if self.fidelity is not None:
            for key, values in (("real", [self.fidelity.real]), ("simulated", self.fidelity.simulated)):
                for v in values:
                    if v not in names:
                        raise ValueError(f"fidelity.{key}: {v!r} is not one of the datasets ({', '.join(names) or 'none'})")
        b = self.benchmark
        if b is not None:
            models = [m.name for m in b.models]
            if not models:
                raise ValueError("benchmark.models: name at least one model to answer the questions")
            if b.judge_mode == "verdict_only" and b.judge.kind == "openai" and b.judge.tokenizer is None:
                # the verdict is opened for the judge in its own format: a served judge's prompt is
                # then rendered here with its tokenizer and sent as a text completion
                raise ValueError("benchmark.judge_mode: verdict_only with a served judge needs judge.tokenizer "
                                 "(the served model's folder or Hub id: its chat template opens the verdict)")
            if b.questions_format == "hub" and not b.judge_prompts:
                raise ValueError("benchmark.judge_prompts: name FastChat's judge_prompts.jsonl when questions come from the Hub")
            if len(set(models)) != len(models):
                raise ValueError("benchmark.models: model names must be unique")
            from realchat.evaluation.benchmarks import safe_name

            files: dict[str, str] = {}
            for m in models:  # answers are kept in <safe name>.jsonl: two names, one file = one model unasked
                first = files.setdefault(safe_name(m).lower(), m)  # .lower(): case-insensitive filesystems
                if first != m:
                    raise ValueError(f"benchmark.models: {first!r} and {m!r} differ only in characters a file "
                                     f"name drops; both would answer into {safe_name(m)}.jsonl (the second would "
                                     "get the first's answers and scores): rename one")
            if "pairwise" in b.modes:
                if b.pairwise_baseline not in models:
                    raise ValueError(f"benchmark.pairwise_baseline: {b.pairwise_baseline!r} must be one of "
                                     f"benchmark.models ({', '.join(models)}) for pairwise judging")
                if len(models) < 2:
                    raise ValueError("benchmark: pairwise judging needs at least two models")
        return self


# -- datasets ---------------------------------------------------------------------------------------


def hash_order(convs: list[Conversation], seed: int | None = None) -> list[Conversation]:
    """A fixed pseudo-random order (by the hash of the id, and of the seed when given): samples are
    the same on every run and machine."""
    salt = "" if seed is None else f"{seed}:"
    return sorted(convs, key=lambda c: hashlib.sha256(f"{salt}{c['id']}".encode()).hexdigest())


def load_dataset_for_eval(ctx: StepContext, i: int) -> tuple[list[Conversation], list[Conversation]]:
    """(one row per conversation in hash order by the seed, the rows that were left out).

    Statistics are per conversation, as the paper's are. A real conversation that ``split`` cut into
    segments counts once, by its first segment: the first at most ``max_tokens`` tokens of it, the
    same window a simulated session has (it ends at ``context_budget``), with the real first question
    (a later segment may open with "continue"). Rounds and tokens per conversation of real and
    simulated data then measure the same thing."""
    from realchat.data import opens_conversation

    convs = ctx.conversations(f"datasets[{i}].dataset")
    firsts = [c for c in convs if opens_conversation(c) and any(m["role"] == "user" for m in c["messages"])]
    kept = {id(c) for c in firsts}
    return hash_order(firsts, ctx.seed), [c for c in convs if id(c) not in kept]


def sample_sizes(cfg: EvaluateConfig, sizes: dict[str, int]) -> dict[str, int]:
    """Conversations each dataset is described on: ``max_conversations``, and with ``equal_size`` the
    smallest compared dataset's size (the fidelity's real reference is a yardstick, not compared)."""
    reference = cfg.fidelity.real if cfg.fidelity is not None else None
    compared = [n for name, n in sizes.items() if name != reference] or list(sizes.values())
    cap = min(compared) if cfg.equal_size and compared else None
    out = {}
    for name, n in sizes.items():
        for limit in (None if name == reference else cap, cfg.max_conversations):
            if limit is not None:
                n = min(n, limit)
        out[name] = n
    return out


def describe_dataset(convs: list[Conversation], counter: Any, encoder: Any, seed: int = 0,
                     bootstrap: int = 200) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures, raw series for plots and fidelity) of one dataset. ``encoder`` None: no topic
    diversity (``realchat stats --no-embeddings``)."""
    import numpy as np

    from realchat.evaluation.embeddings import encode
    from realchat.evaluation.fidelity import rounds_of
    from realchat.curation.langid import LanguageIdentifier
    from realchat.evaluation.statistics import conversation_stats, distinct_n, topic_statistics, user_turns

    msgs = [c["messages"] for c in convs]
    stats = conversation_stats(msgs, counter.count, bootstrap, seed)
    users = user_turns(msgs)
    firsts = user_turns(msgs, first_only=True)
    lengths = counter.count(users) if users else []
    if lengths:
        p10, p50, p90 = (int(x) for x in np.percentile(lengths, [10, 50, 90]))
        stats["user_turn_tokens"] = {"mean": round(float(np.mean(lengths)), 1), "p10": p10, "median": p50, "p90": p90}
    langs: dict[str, int] = {}
    labels, _ = LanguageIdentifier.shared().predict([" ".join(u.split()) for u in users], clean=True)
    for lang in labels:
        langs[lang] = langs.get(lang, 0) + 1
    stats["languages"] = dict(sorted(langs.items(), key=lambda kv: -kv[1])[:10])
    user_emb = encode(encoder, users) if encoder is not None else None
    if encoder is not None:
        stats.update(topic_statistics(user_emb, encode(encoder, firsts)))
    stats["first_turn_distinct_2"] = round(distinct_n(firsts, 2), 4)
    stats["user_turns"] = len(users)
    return stats, {"user_turn_tokens": lengths, "rounds": rounds_of(msgs), "user_embeddings": user_emb,
                   "user_turns": users}


# -- fidelity ---------------------------------------------------------------------------------------


def is_whole(conv: Conversation) -> bool:
    """A real conversation that ``split`` did not cut (its first segment, ending where the conversation
    ended) and that ends on an assistant turn: the only ones where "the real end" is known."""
    body = [m for m in conv["messages"] if m["role"] != "system"]
    return (conv.get("ends_conversation") is not False and conv["id"] == conv.get("base_id", conv["id"])
            and bool(body) and body[-1]["role"] == "assistant")


def later_segments(sampled: list[Conversation], rest: list[Conversation]) -> list[Conversation]:
    """The rows of ``rest`` that continue one of the ``sampled`` conversations (the same ``base_id``):
    the segments after the first of a real conversation ``split`` cut. A simulation has none."""
    keys = {str(c.get("base_id", c["id"])) for c in sampled}
    return [c for c in rest if str(c.get("base_id", c["id"])) in keys]


def turn_series(series: dict[str, Any], later: list[Conversation], encoder: Any) -> dict[str, Any]:
    """``series`` of one dataset with the user turns (and their embeddings) of its sampled
    conversations' later segments added: the turn-level fidelity measures' input."""
    import numpy as np

    from realchat.evaluation.embeddings import encode
    from realchat.evaluation.statistics import user_turns

    extra = user_turns([c["messages"] for c in later])
    if not extra:
        return series
    return {**series, "user_turns": series["user_turns"] + extra,
            "user_embeddings": np.concatenate([series["user_embeddings"], encode(encoder, extra)])}


def run_fidelity(ctx: StepContext, cfg: EvaluateConfig, convs: dict[str, list[Conversation]],
                 series: dict[str, dict[str, Any]], seed: int,
                 full: dict[str, list[Conversation]] | None = None,
                 later: dict[str, list[Conversation]] | None = None) -> dict[str, Any]:
    """Perplexity of the simulator and the baseline on held-out real user turns (the simulator's
    ending decisions in the same pass), then every simulated dataset against the real one: Fréchet
    distance, classifier, role adherence, rounds, how conversations ended, intent decomposition.

    Two units, on the same sampled conversations: what describes a *conversation* (rounds, how it
    ended, perplexity in its context window, intent decomposition) reads each conversation once, by
    its first segment, like the statistics; what describes a *user turn* (Fréchet distance, the
    real-vs-simulated classifier, the role classifier and role adherence) reads the user turns of
    every segment of those conversations (``later``): a later segment's turns are real user turns
    too, and a held-out split of a few hundred conversations, most of them cut, would otherwise
    leave these measures too few turns to fit (or none). Simulated sessions are never cut, so only
    the real reference gains turns; its statistics and rounds are unchanged."""
    import numpy as np

    from realchat.evaluation import behaviour as bh
    from realchat.evaluation import fidelity as fm

    fid = cfg.fidelity
    assert fid is not None
    real = convs[fid.real][: fid.perplexity_conversations]
    prompt, marker = ctx.trained_simulator(fid.simulator_model)
    out: dict[str, Any] = {"system_prompt": prompt, "real": fid.real, "max_length": fid.max_length, "simulated": {}}
    # whole conversations, those already in the perplexity pass first (their ending costs nothing more)
    # (the rest from every real conversation there is, not only the statistics' sample: whole ones are
    # rare where split cuts most, and the ending measure has its own size, ending_conversations)
    pool = (full or convs)[fid.real]
    in_real = {id(c) for c in real}
    whole = [c for c in real if is_whole(c)] + [c for c in pool if id(c) not in in_real and is_whole(c)]
    ending = whole[: fid.ending_conversations] if marker else []
    ppl = {}
    for label, ref, key in (("simulator", fid.simulator_model, "simulator_model"),
                            ("baseline", fid.baseline_model, "baseline_model")):
        if ref is None:
            continue
        ctx.console.print(f"{ctx.name}: perplexity of {label} ({ref}) on {len(real)} held-out real conversations"
                          + (f", ending on {len(ending)}" if label == "simulator" and ending else ""))
        path = ctx.resolve_model(ref, f"fidelity.{key}")
        with ctx.blame(f"fidelity.{key}"):
            if label == "simulator" and ending:
                from realchat.models.backends import LocalModel

                local = LocalModel(path)
                in_ppl = {id(c) for c in real}
                in_end = {id(c) for c in ending}
                union = real + [c for c in ending if id(c) not in in_ppl]
                nll, end_rows = bh.score_user_turns(
                    local.model, local.tokenizer, [c["messages"] for c in union], prompt, marker, fid.max_length,
                    [id(c) in in_ppl for c in union], [id(c) in in_end for c in union])
                del local
                ppl[label] = {"model": ref, **fm.perplexity_with_ci(nll, fid.bootstrap, seed)}
                out["ending"] = {"model": ref, "marker": marker, "selected": len(ending),
                                 **bh.ending_scores(end_rows, fid.bootstrap, seed)}
            else:
                template = (ctx.chat_template(fid.baseline_chat_template, "fidelity.baseline_chat_template")
                            if label == "baseline" else None)  # the simulator speaks what its sft step saved
                ppl[label] = {"model": ref, **fm.model_user_perplexity(path, [c["messages"] for c in real], prompt,
                                                                        fid.max_length, fid.bootstrap, seed, template)}
    if "ending" not in out:
        out["ending"] = {"model": fid.simulator_model, "marker": marker, "conversations": 0,
                         "note": "the simulator was trained without an end marker" if not marker
                         else "off (fidelity.ending_conversations: 0)"}
    out["user_turn_perplexity"] = ppl
    rng = np.random.default_rng(seed)
    later = later or {}
    if any(later.values()):
        from realchat.evaluation.embeddings import load_encoder

        with ctx.blame("embedding_model"):
            encoder = load_encoder(cfg.embedding_model, str(ctx.base_dir))
        series = {k: turn_series(v, later.get(k, []), encoder) for k, v in series.items()}
    out["turn_unit"] = {"unit": "user turns of every segment of the sampled conversations",
                        "user_turns": {k: len(v["user_turns"]) for k, v in series.items()}}

    def turns(name: str) -> np.ndarray:
        emb = series[name]["user_embeddings"]
        return emb[rng.choice(len(emb), fid.max_turns, replace=False)] if len(emb) > fid.max_turns else emb

    clf = None
    # every segment's answers, each once (a later segment opens with the previous one's last answer)
    answers = list(dict.fromkeys(m["content"] for c in convs[fid.real] + later.get(fid.real, [])
                                 for m in c["messages"] if m["role"] == "assistant"))
    if fid.role_turns and answers:
        from realchat.evaluation.embeddings import encode, load_encoder

        pick = np.random.default_rng(seed + 1)  # its own draws: the turns sampled below stay as they were
        picked = [answers[i] for i in sorted(pick.choice(len(answers), min(fid.role_turns, len(answers)), replace=False))]
        with ctx.blame("embedding_model"):
            answer_emb = encode(load_encoder(cfg.embedding_model, str(ctx.base_dir)), picked)
        clf, out["role_classifier"] = bh.role_classifier(series[fid.real]["user_embeddings"],
                                                        series[fid.real]["user_turns"], answer_emb, picked,
                                                        fid.cv_folds, seed)

    def intents(name: str) -> dict[str, Any] | None:
        pairs = [(c["intent"], c["messages"]) for c in convs[name] if c.get("intent")]
        return bh.intent_decomposition(pairs, fid.bootstrap, seed) if pairs else None

    real_intent = intents(fid.real)
    if real_intent:
        out["real_intent_decomposition"] = real_intent
    r = turns(fid.real)
    index = {d.name: i for i, d in enumerate(cfg.datasets)}
    for name in fid.simulated:
        s = turns(name)
        one: dict[str, Any] = {
            "frechet": fm.frechet_distance(r, s, fid.frechet_dims, fid.bootstrap, seed),
            "classifier": fm.classifier_accuracy(r, s, fid.cv_folds, seed),
            "rounds": fm.rounds_comparison(series[fid.real]["rounds"], series[name]["rounds"], fid.bootstrap, seed),
        }
        if clf is not None:
            one["role"] = bh.answer_share(clf, series[name]["user_embeddings"], series[name]["user_turns"])
        decomposition = intents(name)
        if decomposition:
            one["intent_decomposition"] = decomposition
        step = ctx.step_of(f"datasets[{index[name]}].dataset")
        reasons = ctx.stats_of(step).get("stop_reasons") if step else None
        if reasons:
            one["stop_reasons"] = reasons
            one["ended_by"] = fm.end_shares(reasons)
        out["simulated"][name] = one
    return out


# -- benchmarks -------------------------------------------------------------------------------------


def _cached(path: Path, make: Any) -> list[dict[str, Any]]:
    """Rows from ``path`` if a previous (interrupted) run finished them, else ``make()``, written at once."""
    from realchat.evaluation.benchmarks import write_jsonl
    from realchat.evaluation.judge import read_jsonl

    if path.exists():
        return read_jsonl(path)
    rows = make()
    write_jsonl(path, rows)
    return rows


def counted(ctx: StepContext, description: str, total: int | None, unit: str, chat: Any, chunk: int | None,
            make: Any, role: str) -> Any:
    """``make(chat)`` with the calls to ``chat`` counted on the step's progress display and their
    tokens in the step's meter as ``role`` (which may stop the step on a spent budget, between calls):
    a list of conversations is sent in pieces of ``chunk`` (a local model's own batch size, so the
    batches and the generations are the ones it would make anyway; None: the whole list at once, as a
    server backend wants it, and the Batch API as one batch)."""
    meter = ctx.meter()

    with ctx.progress_counter(description, total, unit) as c:
        def call(convs: list[Any], sampling: Any, **kw: Any) -> list[Any]:
            size = chunk or max(len(convs), 1)
            got: list[Any] = []
            for i in range(0, len(convs), size):
                meter.check()
                gens = chat(convs[i : i + size], sampling, **kw)
                meter.record(role, gens)
                got += gens
                c.advance(len(convs[i : i + size]))
            return got

        return make(call)


def seeded(seed: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with torch's generator reset first: sampled answers (FastChat samples writing and
    roleplay at 0.7) are the same on every run, and a resumed run's missing files match a fresh run's."""
    import torch

    torch.manual_seed(seed)
    return fn(*args)


def run_benchmarks(ctx: StepContext, cfg: EvaluateConfig, out: Path, work: Path) -> dict[str, Any]:
    """Answers of every model, then the judge's verdicts; a model or the judge is loaded only when
    some of its files are not already in ``work`` from an interrupted run."""
    import shutil

    from realchat.evaluation import benchmarks as bm
    from realchat.evaluation.judge import summarize

    b = cfg.benchmark
    assert b is not None
    base = ctx.base_dir
    seed = ctx.seed
    prompts = bm.load_judge_prompts(b, base)
    selected: dict[str, tuple[list[dict[str, Any]], dict[Any, list[str]]]] = {}
    for bench in b.benchmarks:
        with ctx.blame("benchmark.questions"):
            questions, refs = bm.load_questions(b, bench, base)
        selected[bench] = (bm.select_questions(questions, b.max_questions), refs)

    answers: dict[str, dict[str, dict[Any, list[str]]]] = {bench: {} for bench in b.benchmarks}
    for i, m in enumerate(b.models):
        paths = {bench: work / bench / "model_answer" / f"{bm.safe_name(m.name)}.jsonl" for bench in selected}
        backend = None
        if not all(p.exists() for p in paths.values()):
            backend = ctx.open_backend(m.backend, f"benchmark.models[{i}].backend")
        ctx.meter().role(f"answers:{m.name}", m.backend)
        for bench, (questions, _refs) in selected.items():
            ctx.console.print(f"{ctx.name}: {m.name} answers {len(questions)} {bench} questions")
            rows = _cached(paths[bench], lambda: counted(
                ctx, f"{m.name} answers {bench}", sum(len(q["turns"]) for q in questions), "turns", backend.chat,
                getattr(backend, "batch_size", None),
                lambda chat: seeded(seed, bm.generate_answers, chat, m.name, questions, b.max_new_tokens),
                f"answers:{m.name}"))
            answers[bench][m.name] = {r["question_id"]: r["choices"][0]["turns"] for r in rows}
        if backend is not None:  # one model in memory at a time (the judge comes next): its engine stops
            ctx.close_backend(backend)
        backend = None

    judge_name = bm.safe_name(b.judge.model if b.judge.kind == "openai" else Path(str(b.judge.model)).name)
    suffix = {"single": "single", "pairwise": "pair"}
    paths = {(bench, mode): work / bench / "model_judgment" / f"{judge_name}_{suffix[mode]}.jsonl"
             for bench in selected for mode in b.modes}
    judge = None
    if not all(p.exists() for p in paths.values()):
        judge = ctx.open_backend(b.judge, "benchmark.judge")
    ctx.meter().role("judge", b.judge)
    first = b.judge_mode == "verdict_only"
    from realchat.models import served_identity

    results: dict[str, Any] = {"judge": b.judge.model, "judge_name": judge_name, "benchmarks": {},
                               "judge_model": served_identity(b.judge),
                               "models": {m.name: served_identity(m.backend) for m in b.models}}
    for bench, (questions, refs) in selected.items():
        rows: list[dict[str, Any]] = []
        for mode in b.modes:
            ctx.console.print(f"{ctx.name}: judge {judge_name} grades {bench} ({mode})")
            if mode == "single":
                rows += _cached(paths[bench, mode], lambda: counted(
                    ctx, f"judge {bench} ({mode})", None, "prompts", judge.chat, getattr(judge, "batch_size", None),
                    lambda chat: bm.judge_single(chat, judge_name, prompts, questions, refs, answers[bench],
                                                 b.judge_max_new_tokens, first), "judge"))
            else:
                rows += _cached(paths[bench, mode], lambda: counted(
                    ctx, f"judge {bench} ({mode})", None, "prompts", judge.chat, getattr(judge, "batch_size", None),
                    lambda chat: bm.judge_pairwise(chat, judge_name, prompts, questions, refs, answers[bench],
                                                   str(b.pairwise_baseline), b.judge_max_new_tokens, first),
                    "judge"))
        summary = summarize(rows, path=bench)
        summary["questions"] = len(questions)
        summary["per_category"] = bm.per_category(rows, {q["question_id"]: q["category"] for q in questions})
        results["benchmarks"][bench] = summary
    shutil.copytree(work, out / "benchmarks")
    tag_benchmark(out / "benchmarks")
    return results


def tag_benchmark(root: Path) -> None:
    """Add a ``benchmark`` field to every row of the published FastChat files: the ``answers`` and
    ``judgments_*`` configs mix MT-Bench and Vicuna-Bench rows (question ids overlap), and FastChat's
    readers ignore fields they do not know."""
    from realchat.evaluation.benchmarks import write_jsonl

    for path in sorted(root.glob("*/*/*.jsonl")):
        bench = path.relative_to(root).parts[0]
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        write_jsonl(path, [{"benchmark": bench, **r} for r in rows])


# -- the step -------------------------------------------------------------------------------------


class Evaluate(StepKind):
    name = "evaluate"
    Config = EvaluateConfig
    summary = "statistics, simulator fidelity and benchmarks of datasets and models → one report"
    shows_in_parent_cards = True

    def external_inputs(self, config: StepConfig, base_dir: Path) -> list[Any]:
        """The benchmark questions, references and judge prompts: their content enters the fingerprint."""
        from realchat.evaluation import fastchat_data
        from realchat.models import model_identity

        b = config.benchmark  # type: ignore[attr-defined]
        if b is None or b.questions_format != "fastchat_dir":
            return []
        if b.questions == fastchat_data.FASTCHAT:  # pinned by digest: the same files wherever they are cached
            # lineage: where the files are (GitHub, at the pinned commit) and a digest over their sha256s
            return [{"key": "benchmark.questions", "role": "file", "repo": "github.com/lm-sys/FastChat",
                     "source": f"https://github.com/lm-sys/FastChat/tree/{fastchat_data.COMMIT}/fastchat/llm_judge/data",
                     "revision": fastchat_data.identity()}]
        return [{"key": "benchmark.questions", "role": "file", "source": b.questions,
                 "revision": model_identity(b.questions, base_dir).get("sha256")}]

    def estimate(self, config: StepConfig) -> list[Any]:
        return estimate_benchmarks(config)  # type: ignore[arg-type]

    def check(self, config: StepConfig, base_dir: Path) -> None:
        from realchat.extras import require

        require("eval", "evaluate")
        check_benchmark_files(config, base_dir)  # type: ignore[arg-type]

    def run(self, ctx: StepContext, out: Path) -> StepResult:
        cfg: EvaluateConfig = ctx.config  # type: ignore[assignment]
        stats = evaluate(ctx, cfg, out)
        return StepResult(stats=stats, manifest={"configs": evaluation_configs(out)})

    def card_metadata(self, stats: dict[str, Any]) -> dict[str, Any]:
        """Figures, model answers and judge verdicts: all machine-made; the languages are those of the
        evaluated datasets' user turns (English for MT-Bench / Vicuna-Bench)."""
        langs: dict[str, int] = {}
        for d in ((stats.get("report") or {}).get("datasets") or {}).values():
            for k, v in (d.get("languages") or {}).items():
                langs[k] = langs.get(k, 0) + int(v)
        return {"annotations_creators": ["machine-generated"], "language_creators": ["machine-generated"],
                "languages": langs or {"en": 1}}

    def card_context(self, stats: dict[str, Any]) -> dict[str, Any]:
        from realchat.evaluation.report import report_markdown

        results = stats.get("report") or {}
        return {"report": report_markdown(results), "plots": results.get("plots") or []}

    def section_for_parent(self, stats: dict[str, Any], parent: str, repo: str) -> str:
        from realchat.evaluation.report import card_section

        return card_section(stats.get("report") or {}, parent, repo)


#: (questions, turns) of each benchmark as FastChat ships it: what ``realchat plan`` counts with.
BENCHMARK_SIZES = {"mt_bench": (80, 2), "vicuna_bench": (80, 1)}
#: Rough tokens of one benchmark question turn and of a FastChat judge prompt's own text (estimates).
QUESTION_TOKENS, JUDGE_PROMPT_TOKENS = 70, 250


def estimate_benchmarks(cfg: EvaluateConfig) -> list[Any]:
    """Calls and tokens of each benchmark model and of the judge, from the benchmarks' sizes, with
    every answer and verdict at its token limit: an upper estimate."""
    from realchat.models.usage import RoleEstimate

    b = cfg.benchmark
    if b is None:
        return []
    sizes = [(min(q, b.max_questions or q), t) for q, t in (BENCHMARK_SIZES[x] for x in b.benchmarks)]
    answer = b.max_new_tokens
    turns = sum(q * t for q, t in sizes)
    # turn k's prompt: the k questions and the k-1 answers before it
    prompts = sum(q * sum(k * QUESTION_TOKENS + (k - 1) * answer for k in range(1, t + 1)) for q, t in sizes)
    out = [RoleEstimate(f"answers:{m.name}", m.backend, turns, prompts, turns * answer) for m in b.models]
    verdict = b.judge_max_new_tokens
    judged = [(m, 1) for m in b.models] if "single" in b.modes else []
    if "pairwise" in b.modes:  # each model against the baseline, in both orders, with both answers shown
        judged += [(m, 2) for m in b.models if m.name != b.pairwise_baseline]
    calls = prompt = 0
    for _model, answers in judged:
        orders = answers  # single: one order of one answer; pairwise: two orders of two answers
        for q, t in sizes:
            for k in range(1, t + 1):
                calls += q * orders
                prompt += q * orders * (JUDGE_PROMPT_TOKENS + k * QUESTION_TOKENS + answers * k * answer)
    if calls:
        out.append(RoleEstimate("judge", b.judge, calls, prompt, calls * verdict,
                                f"{', '.join(b.modes)} over {sum(q for q, _ in sizes)} questions"))
    return out


def check_benchmark_files(cfg: EvaluateConfig, base_dir: Path) -> None:
    """FastChat's layout must be there before anything runs: the files each benchmark needs."""
    from realchat.errors import RealChatError, RecipeError
    from realchat.evaluation import fastchat_data

    b = cfg.benchmark
    if b is None or b.questions_format != "fastchat_dir":
        return
    if b.questions == fastchat_data.FASTCHAT:  # fetched into the cache now, or one line saying how to
        try:
            fastchat_data.fetch(b.benchmarks)
        except RealChatError as e:
            raise RecipeError(e.message, field="benchmark.questions", hint=e.hint) from None
        return
    root = resolve_local(b.questions, base_dir)
    if b.questions_hub and not root.exists():
        return  # the Hub fallback is read when the step runs (and says so if it cannot be)
    needed = [(root / f"{bench}/question.jsonl", "questions") for bench in b.benchmarks]
    if not b.judge_prompts:
        needed.append((root / "judge_prompts.jsonl", "questions"))
    for path, key in needed:
        if not path.is_file():
            raise RecipeError(f"file not found: {path}", field=f"benchmark.{key}",
                              hint="FastChat's llm_judge/data layout; paths are relative to the recipe")


def evaluate(ctx: StepContext, cfg: EvaluateConfig, out: Path) -> dict[str, Any]:
    from realchat.evaluation.benchmarks import write_jsonl
    from realchat.evaluation.embeddings import load_encoder
    from realchat.evaluation.report import headline, metric_rows, write_report

    started = time.perf_counter()
    seed = ctx.seed
    work = ctx.work_dir()
    results: dict[str, Any] = {"datasets": {}, "fidelity": None, "benchmarks": None, "timings_s": {},
                               "dataset_steps": {d.name: ctx.step_of(f"datasets[{i}].dataset")
                                                 for i, d in enumerate(cfg.datasets)},
                               "model_steps": {m.name: ctx.step_of(f"benchmark.models[{i}].backend.model")
                                               for i, m in enumerate(cfg.benchmark.models if cfg.benchmark else [])},
                               "simulator_step": ctx.step_of("fidelity.simulator_model") if cfg.fidelity else None}

    t0 = time.perf_counter()
    loaded = {d.name: load_dataset_for_eval(ctx, i) for i, d in enumerate(cfg.datasets)}
    full = {k: v[0] for k, v in loaded.items()}
    sizes = sample_sizes(cfg, {k: len(v) for k, v in full.items()})
    convs = {k: v[: sizes[k]] for k, v in full.items()}
    series: dict[str, dict[str, Any]] = {}
    if convs:
        counter = ctx.token_counter(cfg.tokenizer, "tokenizer")
        with ctx.blame("embedding_model"):
            encoder = load_encoder(cfg.embedding_model, str(ctx.base_dir))
        for name, cs in convs.items():
            ctx.console.print(f"{ctx.name}: statistics of {name} ({len(cs):,} of {len(full[name]):,} conversations)")
            stats, series[name] = describe_dataset(cs, counter, encoder, seed)
            results["datasets"][name] = {"available": len(full[name]), "later_segments_left_out": len(loaded[name][1]),
                                         **stats}
    results["sampling"] = {"unit": "conversation (a cut real conversation: its first segment)",
                           "equal_size": cfg.equal_size, "sizes": sizes,
                           "reference": cfg.fidelity.real if cfg.fidelity is not None else None}
    results["timings_s"]["statistics"] = round(time.perf_counter() - t0, 1)

    if cfg.fidelity is not None:
        t0 = time.perf_counter()
        # the ending measure may use any row whose real end is known (is_whole), also one whose start
        # split had to reject: it is about ending, not about the first question
        pool = {k: v + [c for c in loaded[k][1] if is_whole(c)] for k, v in full.items()}
        later = {k: later_segments(convs[k], loaded[k][1]) for k in convs}
        results["fidelity"] = run_fidelity(ctx, cfg, convs, series, seed, pool, later)
        results["timings_s"]["fidelity"] = round(time.perf_counter() - t0, 1)
    if cfg.benchmark is not None:
        t0 = time.perf_counter()
        try:
            results["benchmarks"] = run_benchmarks(ctx, cfg, out, work / "benchmarks")
        except BudgetReached as e:  # the answers and verdict files finished so far stay in the work folder
            e.file, e.field = str(ctx.loaded.path), ctx.key(e.field or "max_cost")
            raise
        finally:
            ctx.meter().save()  # what this run spent counts towards the budget of the next
        results["timings_s"]["benchmarks"] = round(time.perf_counter() - t0, 1)
        # tokens (and cost, with prices) of the judge and of each benchmark model, all runs together
        results["usage"] = ctx.meter().report()
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["plots"] = write_report(out, results, series, f"{ctx.loaded.name}: {ctx.name}")
    # JSON lines like the FastChat files beside it: a Hub repo's configs are read by one builder
    write_jsonl(out / "data" / "metrics.jsonl", metric_rows(results))
    return {**headline(results), "report": results}


def evaluation_configs(out: Path) -> list[dict[str, Any]]:
    """Dataset configs of the evaluation repo: the metrics table, and the FastChat files that exist."""
    configs: list[dict[str, Any]] = [{"config_name": "default", "default": True,
                                      "data_files": [{"split": "train", "path": "data/metrics.jsonl"}]}]
    for name, pattern in (("answers", "benchmarks/*/model_answer/*.jsonl"),
                          ("judgments_single", "benchmarks/*/model_judgment/*_single.jsonl"),
                          ("judgments_pair", "benchmarks/*/model_judgment/*_pair.jsonl")):
        if list(out.glob(pattern)):
            configs.append({"config_name": name, "data_files": [{"split": "train", "path": pattern}]})
    return configs
