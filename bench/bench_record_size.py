"""Benchmark: peak memory of a curate step on one oversized record.

Two records from the fault sweep (issue 24): one conversation with a single 50 MB user turn, and one
of 10,000 turns, 2 MB in all. Each is curated (with one ordinary record beside it) in a fresh child
process by the ops whose cost grows with a record (token counting, near dedup's shingles, split; the
default recipe's language and length rules would reject both records before them, so they are left
out here), and the child's peak RSS is printed, with the bound that
``source.max_record_chars`` declares (default 1,000,000 characters: both records are rejected as
``record.too_large`` before any op sees them) and, with ``--unbounded``, without it (what the ops
cost when they get the record: gigabytes; ``--turn-mb`` makes the long turn smaller for that). Not a
test: figures vary with the machine.

    python bench/bench_record_size.py [--unbounded] [--turn-mb 50]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def text(n: int, rng: random.Random) -> str:
    """About ``n`` characters of word-like text in sentences and lines (not one repeated string)."""
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    out, size = [], 0
    while size < n:
        line = " ".join(rng.choice(words) for _ in range(12)) + (".\n" if rng.random() < 0.3 else ". ")
        out.append(line)
        size += len(line)
    return "".join(out)[:n]


def records(case: str, turn_mb: float) -> list[dict]:
    rng = random.Random(0)
    small = {"id": "small", "conversations": [{"from": "human", "value": "Hello there, how are you today?"},
                                              {"from": "gpt", "value": "Fine, thank you."}]}
    if case == "one_long_turn":
        big = {"id": "big", "conversations": [{"from": "human", "value": text(int(turn_mb * 1e6), rng)},
                                              {"from": "gpt", "value": "ok."}]}
    else:
        big = {"id": "big", "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": text(200, rng)}
                                              for i in range(10_000)]}
    return [small, big]


def run(case: str, bound: bool, turn_mb: float, folder: Path) -> None:
    ops = [{"op": "length", "max_tokens": 1_000_000}, {"op": "near_dedup"}, {"op": "split", "max_tokens": 2048}]
    src = folder / f"{case}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records(case, turn_mb)))
    source = {"format": "sharegpt", "path": str(src)}
    if not bound:
        source["max_record_chars"] = None
    doc = {"name": case, "run_root": str(folder / "runs"), "executor": {"workers": 1},
           "steps": {"curate": {"kind": "curate", "source": source, "filters": ops}}}
    recipe = folder / f"{case}-{bound}.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    t0 = time.perf_counter()
    err = folder / "stderr.txt"
    child = subprocess.Popen([sys.executable, "-m", "realchat.cli", "build", str(recipe), "--no-progress",
                              "--no-push", "--force"], stdout=subprocess.DEVNULL, stderr=err.open("w"), cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    stats_file = folder / "runs" / case / "curate" / "stats.json"
    rejected = json.loads(stats_file.read_text())["rejected_by_reason"] if child.returncode == 0 else \
        f"exit {child.returncode}: {err.read_text()[-300:]}"
    size = src.stat().st_size / 1e6
    print(f"{case:14s} {size:6.1f} MB record  bound={'on ' if bound else 'off'}  peak RSS "
          f"{usage.ru_maxrss / 1024:8.0f} MB  {seconds:6.1f} s  rejected: {rejected}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--unbounded", action="store_true", help="also curate without source.max_record_chars")
    ap.add_argument("--turn-mb", type=float, default=50.0, help="size of the one long turn, MB")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="realchat-bench-size-") as tmp:
        for bound in ([True, False] if args.unbounded else [True]):
            for case in ("many_turns", "one_long_turn"):
                run(case, bound, args.turn_mb, Path(tmp))


if __name__ == "__main__":
    main()
