"""Benchmark: the curate stage of the default recipe on all shipped ShareGPT conversations.

Prints conversations per second, wall time per op and peak RSS. Target (issue 2): the whole stage
in under 60 s on a 2-core machine, peak RSS under 2 GB. Not a test: figures vary with the machine.

    python bench/bench_curate.py [--recipe recipes/realchat.yaml]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from realchat.langid import LanguageIdentifier
from realchat.pipeline import build_stage, plan
from realchat.recipe import load_recipe
from realchat.stages.context import StageContext


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="recipes/realchat.yaml")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="realchat-bench-"))
    try:
        loaded = load_recipe(args.recipe, [f"run_root={root}"])
        # warm the converted-tokenizer cache so the figure is the stage, not a one-off conversion
        from realchat.models import token_counter

        token_counter(loaded.recipe.stages.curate.tokenizer, str(loaded.base_dir))
        p = plan(loaded)[0]
        t0 = time.perf_counter()
        stats = build_stage(loaded, p, StageContext(loaded, "curate", show_progress=False))
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
    print(f"wall time               {wall:.1f} s   (target < 60 s)")
    print(f"throughput              {stats['read'] / wall:,.0f} conversations/s")
    print(f"peak RSS                {peak_mb:,.0f} MB (target < 2,048 MB)")
    print(f"fastText lid.176        {lid_us:.1f} µs per 60-char turn")
    print("per op (s):")
    for r in stats["rules"]:
        print(f"  {r['rule']:<34} {r['seconds']:>6.2f}  in {r['in']:>6,}  rejected {r['rejected']:>5,}")


if __name__ == "__main__":
    main()
