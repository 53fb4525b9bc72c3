"""Benchmark: the curate step on a large generated input, local executor vs Ray executor.

The input is built from the shipped ShareGPT conversations, repeated and perturbed so that dedup has
real work: every copy gets a new id; one copy in ten is exact (exact_dedup removes it), one in ten has
one word of each user turn changed (near_dedup removes it), the others have a tenth of their user-turn
words replaced (new conversations as far as dedup can tell). ``--turn-pairs K`` keeps the first K
user/assistant pairs of each conversation (a million whole ShareGPT conversations are 7 GB of JSON).

Each executor runs the curate step in a child process, so the peak memory printed is the whole process
tree's (driver, Ray's daemons and workers) as PSS, shared pages counted once (the sum of RSS would count
Ray's object store once per worker), sampled every 0.2 s; the local executor also reports the most
conversation rows it held at once. ``--rules recipe`` runs the recipe's own filters (the default
recipe's, with its tokenizer and fastText: about 300 conversations/s here); ``--rules dedup`` the
rules whose cost grows with the whole input: shape, character length, quality, exact and near dedup.
Not a test: figures vary with the machine.

    python bench/bench_executors.py --conversations 20000 [--executors local ray] [--num-cpus 2]
    python bench/bench_executors.py --conversations 1000000 --turn-pairs 1 --rules dedup --executors local
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def make_input(n: int, out: Path, seed: int = 0, turn_pairs: int | None = None) -> int:
    """Write ``n`` conversations (JSON lines, ShareGPT fields) made from the shipped ones."""
    from realchat.curation.sources import SourceConfig, open_source

    rng = random.Random(seed)
    base = [r.data for r in open_source(SourceConfig(), Path("."))[0] if r.data is not None]
    if turn_pairs is not None:
        base = [dict(rec, conversations=(rec.get("conversations") or [])[:2 * turn_pairs]) for rec in base]
    vocab = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    written = 0
    with out.open("w", encoding="utf-8") as f:
        copy = 0
        while written < n:
            for rec in base:
                if written >= n:
                    break
                new = dict(rec)
                new["id"] = f"{rec.get('id')}~{copy}"
                kind = rng.random() if copy else None
                if kind is not None and kind >= 0.1:
                    turns = []
                    for t in rec.get("conversations") or []:
                        t = dict(t)
                        if t.get("from") == "human" and isinstance(t.get("value"), str):
                            words = t["value"].split(" ")
                            if kind < 0.2:  # near duplicate: one word changed
                                words[rng.randrange(len(words))] = rng.choice(vocab)
                            else:  # a tenth of the words changed: new as far as dedup can tell
                                for _ in range(max(1, len(words) // 10)):
                                    words[rng.randrange(len(words))] = rng.choice(vocab)
                            t["value"] = " ".join(words)
                        turns.append(t)
                    new["conversations"] = turns
                f.write(json.dumps(new, ensure_ascii=False) + "\n")
                written += 1
            copy += 1
    return written


DEDUP_RULES = [
    {"op": "shape", "require_alternation": True, "first_role": "user", "leading_assistant": "trim", "min_user_turns": 1},
    {"op": "length", "min_chars": 1, "max_chars": 20000},
    {"op": "quality", "min_alpha_ratio": 0.2, "max_dup_line_ratio": 0.6, "max_ngram_repetition": 0.6,
     "max_url_ratio": 0.8, "max_mean_word_length": 25, "policy": "share", "min_share": 0.8},
    {"op": "exact_dedup"},
    {"op": "near_dedup", "shingle_size": 5, "num_perm": 128, "threshold": 0.8},
]


def run_child(recipe: str, source: Path, root: Path, executor: str, num_cpus: int, shard_rows: int,
              rules: str, workers: int | None = None) -> dict:
    overrides = [f"run_root={root / executor}", f"steps.curate.source.path={source}",
                 "steps.curate.source.format=sharegpt", f"executor.kind={executor}",
                 f"executor.shard_rows={shard_rows}"]
    if executor == "local" and workers is not None:
        overrides.append(f"executor.workers={workers}")
    if rules == "dedup":
        overrides.append(f"steps.curate.filters={json.dumps(DEDUP_RULES)}")
    if executor == "ray":
        overrides += [f"executor.num_cpus={num_cpus}"]
    code = (
        "import json, sys, time\n"
        "from realchat.engine.build import build_step, graph_of, plan\n"
        "from realchat.engine.context import StepContext\n"
        "from realchat.recipe.load import load_recipe\n"
        "loaded = load_recipe(sys.argv[1], sys.argv[2:])\n"
        "from realchat.models import token_counter\n"
        "token_counter(loaded.config('curate').tokenizer, str(loaded.base_dir))\n"
        "graph = graph_of(loaded, only=['curate'])\n"  # the other steps' checks are not measured
        "p = [x for x in plan(loaded, graph) if x.node.name == 'curate'][0]\n"
        "t0 = time.perf_counter()\n"
        "stats = build_step(loaded, graph, p, StepContext(loaded, p.node, p.fingerprint, show_progress=False))\n"
        "print('RESULT ' + json.dumps({'wall': time.perf_counter() - t0, 'read': stats['read'],\n"
        "      'kept': stats['kept_conversations'], 'rules': stats['rules'], 'executor': stats.get('executor', {})}))\n"
    )
    errors = root / f"{executor}.stderr.txt"  # the child's log, shown when it fails
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", code, recipe, *overrides], stdout=subprocess.PIPE,
                            stderr=errors.open("w"), text=True)
    peak = [0]

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [p] + p.children(recursive=True)
                # PSS: shared pages (Ray's object store is mapped by every worker) counted once
                peak[0] = max(peak[0], sum(c.memory_full_info().pss for c in tree if c.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    t.join()
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{executor}: the build failed:\n{out[-2000:]}{errors.read_text()[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    result["peak_rss_mb"] = peak[0] / 2**20
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(HERE.parent / "recipes" / "realchat.yaml"))
    ap.add_argument("--conversations", type=int, default=20_000)
    ap.add_argument("--executors", nargs="+", default=["local", "ray"])
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=5_000)
    ap.add_argument("--rules", choices=["recipe", "dedup"], default="recipe")
    ap.add_argument("--workers", type=int, default=None, help="the local executor's processes")
    ap.add_argument("--turn-pairs", type=int, default=None)
    ap.add_argument("--keep-input", type=Path, default=None, help="reuse (or write) the input here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="realchat-bench-exec-") as tmp:
        root = Path(tmp)
        source = args.keep_input or root / "input.jsonl"
        t0 = time.perf_counter()
        if source.exists():
            n = sum(1 for _ in source.open("rb"))
        else:
            n = make_input(args.conversations, source, turn_pairs=args.turn_pairs)
        print(f"input: {n:,} conversations, {source.stat().st_size / 2**20:,.0f} MiB "
              f"(built in {time.perf_counter() - t0:.0f} s)")
        results = {}
        for ex in args.executors:
            results[ex] = r = run_child(args.recipe, source, root, ex, args.num_cpus, args.shard_rows, args.rules,
                                        args.workers)
            held = r["executor"].get("rows_held_peak")
            print(f"{ex:<6} wall {r['wall']:7.1f} s   {r['read'] / r['wall']:8,.0f} conversations/s   "
                  f"peak PSS (process tree) {r['peak_rss_mb']:7,.0f} MB   kept {r['kept']:,}"
                  + (f"   rows held at most {held:,}" if held is not None else ""))
            for rule in r["rules"]:
                print(f"         {rule['rule']:<30} {rule['seconds']:>8.2f} s  rejected {rule['rejected']:>7,}")
        if len(results) == 2:
            a, b = (results[k] for k in args.executors)
            same = a["kept"] == b["kept"] and [x["rejected"] for x in a["rules"]] == [x["rejected"] for x in b["rules"]]
            print(f"same books on both executors: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
