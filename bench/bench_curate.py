"""Benchmark: the curate step of the default recipe on all shipped ShareGPT conversations.

Prints conversations per second, wall time per op and peak RSS. Target (issue 2): the whole step
in under 60 s on a 2-core machine (issue 13 asks for 30 s), peak RSS under 2 GB. Not a test: figures
vary with the machine.

    python bench/bench_curate.py [--recipe recipes/realchat.yaml]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from realchat.curation.langid import LanguageIdentifier
from realchat.engine.build import build_step, graph_of, plan
from realchat.engine.context import StepContext
from realchat.recipe.load import load_recipe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/realchat.yaml")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="realchat-bench-"))
    try:
        loaded = load_recipe(args.recipe, [f"run_root={root}"])
        # warm the converted-tokenizer cache so the figure is the step, not a one-off conversion
        from realchat.models import token_counter

        token_counter(loaded.config("curate").tokenizer, str(loaded.base_dir))  # type: ignore[attr-defined]
        graph = graph_of(loaded, only=["curate"])  # the other steps' checks (evaluate's files) are not measured
        p = plan(loaded, graph)[0]
        t0 = time.perf_counter()
        stats = build_step(loaded, graph, p, StepContext(loaded, p.node, p.fingerprint, show_progress=False))
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lid = LanguageIdentifier.shared()
    texts = ["How do I reverse a linked list in Python without recursion?"] * 20000
    t1 = time.perf_counter()
    lid.predict(texts, clean=True)
    lid_us = (time.perf_counter() - t1) / len(texts) * 1e6

    print(f"records read            {stats['read']:,}")
    print(f"conversations kept      {stats['kept_conversations']:,} ({stats['kept_rows']:,} segments)")
    print(f"wall time               {wall:.1f} s   (target < 60 s; issue 13: < 30 s)")
    print(f"throughput              {stats['read'] / wall:,.0f} conversations/s")
    print(f"peak RSS                {peak_mb:,.0f} MB (target < 2,048 MB)")
    print(f"fastText lid.176        {lid_us:.1f} µs per 60-char turn")
    print("per op (s):")
    for r in stats["rules"]:
        print(f"  {r['rule']:<34} {r['seconds']:>6.2f}  in {r['in']:>6,}  rejected {r['rejected']:>5,}")


if __name__ == "__main__":
    main()
