"""Stage ``evaluate``: dataset statistics, simulator fidelity and assistant benchmarks → a report.

Three independent parts, each optional in the recipe:

1. **Dataset statistics** (the paper's §4) for every dataset the recipe lists (curated, simulated,
   any baseline file): rounds, tokens per utterance and conversation, user-turn lengths, languages,
   MTLD, distinct-n, topic and first-turn diversity.
2. **Simulator fidelity** (``realchat.fidelity``): perplexity on held-out real user turns (simulator
   vs the base model prompted as the user), Fréchet distance and a real-vs-simulated classifier in
   embedding space, how conversations end, rounds against the real ones.
3. **Benchmarks** (``realchat.benchmarks``): MT-Bench / Vicuna-Bench answers and LLM-judge verdicts
   in FastChat's file formats.

Output: ``report.md`` (also the card's body), ``stats.json`` (every figure), ``data/metrics.jsonl``
(one row per figure, the dataset's default config), ``plots/*.png``, ``benchmarks/<bench>/model_answer``
and ``model_judgment`` (FastChat files, configs ``answers``, ``judgments_single``, ``judgments_pair``).

Answers and judgments are kept in the stage's work folder as each model or judge pass finishes, so an
interrupted run resumes without regenerating them.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from realchat.datasets_io import Conversation, read_conversations, split_held_out
from realchat.errors import RecipeError
from realchat.recipe import EvalDataset, EvaluateStage
from realchat.runs import MANIFEST, write_json
from realchat.stages.context import StageContext


# -- datasets ---------------------------------------------------------------------------------------


def hash_order(convs: list[Conversation]) -> list[Conversation]:
    """A fixed pseudo-random order (by id hash): samples are the same on every run and machine."""
    return sorted(convs, key=lambda c: hashlib.sha256(c["id"].encode()).hexdigest())


def load_dataset_for_eval(ctx: StageContext, d: EvalDataset) -> list[Conversation]:
    convs = read_conversations(d.dataset, d.data_format, ctx.loaded.base_dir, ctx.stage_output)
    if d.split == "held_out":
        tu = ctx.loaded.recipe.stages.train_user
        if tu is None or tu.eval_share <= 0:
            raise RecipeError(f"dataset {d.name}: split held_out needs a train_user stage with eval_share > 0",
                              file=str(ctx.loaded.path), field="stages.evaluate.datasets")
        _, convs = split_held_out(convs, tu.eval_share)
    return hash_order([c for c in convs if any(m["role"] == "user" for m in c["messages"])])


def sample_sizes(cfg: EvaluateStage, sizes: dict[str, int]) -> dict[str, int]:
    cap = min(sizes.values()) if cfg.equal_size and sizes else None
    out = {}
    for name, n in sizes.items():
        for limit in (cap, cfg.max_conversations):
            if limit is not None:
                n = min(n, limit)
        out[name] = n
    return out


def describe_dataset(convs: list[Conversation], counter: Any, encoder: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures, raw series for plots and fidelity) of one dataset."""
    import numpy as np

    from realchat.embeddings import encode
    from realchat.fidelity import rounds_of
    from realchat.langid import LanguageIdentifier
    from realchat.metrics import conversation_stats, distinct_n, mean_pairwise_cosine, user_turns

    msgs = [c["messages"] for c in convs]
    stats = conversation_stats(msgs, counter.count)
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
    user_emb = encode(encoder, users)
    stats["topic_diversity_cosine"] = round(mean_pairwise_cosine(user_emb), 4) if len(users) > 1 else None
    first_emb = encode(encoder, firsts)
    stats["first_turn_cosine"] = round(mean_pairwise_cosine(first_emb), 4) if len(firsts) > 1 else None
    stats["first_turn_distinct_2"] = round(distinct_n(firsts, 2), 4)
    stats["user_turns"] = len(users)
    return stats, {"user_turn_tokens": lengths, "rounds": rounds_of(msgs), "user_embeddings": user_emb}


# -- fidelity ---------------------------------------------------------------------------------------


def run_fidelity(ctx: StageContext, cfg: EvaluateStage, convs: dict[str, list[Conversation]],
                 series: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    import numpy as np

    from realchat import fidelity as fm

    fid = cfg.fidelity
    assert fid is not None
    real = convs[fid.real][: fid.perplexity_conversations]
    prompt, _marker = ctx.trained_simulator(fid.simulator_model)
    out: dict[str, Any] = {"system_prompt": prompt, "real": fid.real, "simulated": fid.simulated}
    ppl = {}
    for label, ref, key in (("simulator", fid.simulator_model, "simulator_model"),
                            ("baseline", fid.baseline_model, "baseline_model")):
        if ref is None:
            continue
        ctx.console.print(f"evaluate: perplexity of {label} ({ref}) on {len(real)} held-out real conversations")
        field = f"stages.evaluate.fidelity.{key}"
        path = ctx.resolve_model(ref, field)
        with ctx.blame(field):
            ppl[label] = {"model": ref, **fm.model_user_perplexity(path, [c["messages"] for c in real], prompt,
                                                                    fid.max_length, fid.bootstrap, seed)}
    out["user_turn_perplexity"] = ppl
    rng = np.random.default_rng(seed)

    def turns(name: str) -> np.ndarray:
        emb = series[name]["user_embeddings"]
        return emb[rng.choice(len(emb), fid.max_turns, replace=False)] if len(emb) > fid.max_turns else emb

    r, s = turns(fid.real), turns(fid.simulated)
    out["frechet"] = fm.frechet_distance(r, s, fid.frechet_dims, fid.bootstrap, seed)
    out["classifier"] = fm.classifier_accuracy(r, s, fid.cv_folds, seed)
    out["rounds"] = fm.rounds_comparison(series[fid.real]["rounds"], series[fid.simulated]["rounds"])
    sim_ds = next(d for d in cfg.datasets if d.name == fid.simulated)
    if sim_ds.data_format == "stage":
        reasons = ctx.stage_stats(sim_ds.dataset).get("stop_reasons")
        if reasons:
            out["stop_reasons"] = reasons
            out["ended_by"] = fm.end_shares(reasons)
    return out


# -- benchmarks -------------------------------------------------------------------------------------


def _cached(path: Path, make: Any) -> list[dict[str, Any]]:
    """Rows from ``path`` if a previous (interrupted) run finished them, else ``make()``, written at once."""
    from realchat.benchmarks import write_jsonl
    from realchat.judge import read_jsonl

    if path.exists():
        return read_jsonl(path)
    rows = make()
    write_jsonl(path, rows)
    return rows


def seeded(seed: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with torch's generator reset first: sampled answers (FastChat samples writing and
    roleplay at 0.7) are the same on every run, and a resumed run's missing files match a fresh run's."""
    import torch

    torch.manual_seed(seed)
    return fn(*args)


def run_benchmarks(ctx: StageContext, cfg: EvaluateStage, out: Path, work: Path) -> dict[str, Any]:
    """Answers of every model, then the judge's verdicts; a model or the judge is loaded only when
    some of its files are not already in ``work`` from an interrupted run."""
    import shutil

    from realchat import benchmarks as bm
    from realchat.judge import summarize

    b = cfg.benchmark
    assert b is not None
    base = ctx.loaded.base_dir
    seed = ctx.loaded.recipe.seed
    prompts = bm.load_judge_prompts(b, base)
    selected: dict[str, tuple[list[dict[str, Any]], dict[Any, list[str]]]] = {}
    for bench in b.benchmarks:
        questions, refs = bm.load_questions(b, bench, base)
        selected[bench] = (bm.select_questions(questions, b.max_questions), refs)

    answers: dict[str, dict[str, dict[Any, list[str]]]] = {bench: {} for bench in b.benchmarks}
    for i, m in enumerate(b.models):
        paths = {bench: work / bench / "model_answer" / f"{bm.safe_name(m.name)}.jsonl" for bench in selected}
        backend = None
        if not all(p.exists() for p in paths.values()):
            backend = ctx.open_backend(m.backend, f"stages.evaluate.benchmark.models[{i}].backend")
        for bench, (questions, _refs) in selected.items():
            ctx.console.print(f"evaluate: {m.name} answers {len(questions)} {bench} questions")
            rows = _cached(paths[bench], lambda: seeded(seed, bm.generate_answers, backend.chat, m.name, questions,
                                                        b.max_new_tokens))
            answers[bench][m.name] = {r["question_id"]: r["choices"][0]["turns"] for r in rows}
        backend = None  # one model in memory at a time (the judge comes next)

    judge_name = bm.safe_name(b.judge.model if b.judge.kind == "openai" else Path(str(b.judge.model)).name)
    suffix = {"single": "single", "pairwise": "pair"}
    paths = {(bench, mode): work / bench / "model_judgment" / f"{judge_name}_{suffix[mode]}.jsonl"
             for bench in selected for mode in b.modes}
    judge = None
    if not all(p.exists() for p in paths.values()):
        judge = ctx.open_backend(b.judge, "stages.evaluate.benchmark.judge")
    first = b.judge_mode == "verdict_only"
    results: dict[str, Any] = {"judge": b.judge.model, "judge_name": judge_name, "benchmarks": {}}
    for bench, (questions, refs) in selected.items():
        rows: list[dict[str, Any]] = []
        for mode in b.modes:
            ctx.console.print(f"evaluate: judge {judge_name} grades {bench} ({mode})")
            if mode == "single":
                rows += _cached(paths[bench, mode], lambda: bm.judge_single(
                    judge.chat, judge_name, prompts, questions, refs, answers[bench], b.judge_max_new_tokens, first))
            else:
                rows += _cached(paths[bench, mode], lambda: bm.judge_pairwise(
                    judge.chat, judge_name, prompts, questions, refs, answers[bench], str(b.pairwise_baseline),
                    b.judge_max_new_tokens, first))
        summary = summarize(rows, path=bench)
        summary["questions"] = len(questions)
        summary["per_category"] = bm.per_category(rows, {q["question_id"]: q["category"] for q in questions})
        results["benchmarks"][bench] = summary
    shutil.copytree(work, out / "benchmarks")
    return results


# -- the stage ------------------------------------------------------------------------------------


def run(ctx: StageContext, out: Path, fingerprint: str, input_fingerprint: str) -> dict[str, Any]:
    from realchat.benchmarks import write_jsonl
    from realchat.embeddings import load_encoder
    from realchat.report import headline, metric_rows, write_report

    cfg: EvaluateStage = ctx.loaded.stage_config("evaluate")  # type: ignore[assignment]
    started = time.perf_counter()
    seed = ctx.loaded.recipe.seed
    work = ctx.work_dir(fingerprint)
    results: dict[str, Any] = {"datasets": {}, "fidelity": None, "benchmarks": None, "timings_s": {}}

    t0 = time.perf_counter()
    full = {d.name: load_dataset_for_eval(ctx, d) for d in cfg.datasets}
    sizes = sample_sizes(cfg, {k: len(v) for k, v in full.items()})
    convs = {k: v[: sizes[k]] for k, v in full.items()}
    series: dict[str, dict[str, Any]] = {}
    if convs:
        counter = ctx.token_counter()
        with ctx.blame("stages.evaluate.embedding_model"):
            encoder = load_encoder(cfg.embedding_model, str(ctx.loaded.base_dir))
        for name, cs in convs.items():
            ctx.console.print(f"evaluate: statistics of {name} ({len(cs):,} of {len(full[name]):,} conversations)")
            stats, series[name] = describe_dataset(cs, counter, encoder)
            results["datasets"][name] = {"available": len(full[name]), **stats}
    results["timings_s"]["statistics"] = round(time.perf_counter() - t0, 1)

    if cfg.fidelity is not None:
        t0 = time.perf_counter()
        results["fidelity"] = run_fidelity(ctx, cfg, convs, series, seed)
        results["timings_s"]["fidelity"] = round(time.perf_counter() - t0, 1)
    if cfg.benchmark is not None:
        t0 = time.perf_counter()
        results["benchmarks"] = run_benchmarks(ctx, cfg, out, work / "benchmarks")
        results["timings_s"]["benchmarks"] = round(time.perf_counter() - t0, 1)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["plots"] = write_report(out, results, series, ctx.loaded.name)
    stats = {**headline(results), "report": results}
    write_json(out / "stats.json", stats)
    # JSON lines like the FastChat files beside it: a Hub repo's configs are read by one builder
    write_jsonl(out / "data" / "metrics.jsonl", metric_rows(results))

    from realchat.cards import render_card

    manifest = ctx.manifest(fingerprint, parents=ctx.parent_refs(), configs=evaluation_configs(out))
    (out / "README.md").write_text(render_card(ctx.loaded, "evaluate", manifest, stats))
    write_json(out / MANIFEST, manifest)
    return stats


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
