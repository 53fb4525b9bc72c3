"""Planning shards on the driver vs reading the whole source: the shipped ShareGPT file (125 MB JSON
array) and the same records as JSONL. Prints seconds and shards; no assertion (figures for the README).

    PYTHONPATH=. python bench/bench_shards.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from realchat.curation.sources import SourceConfig, open_source
from realchat.curation.sources.shards import plan_shards, read_shard
from realchat.recipe.base import DEFAULT_SHAREGPT
from realchat.recipe.refs import resolve_package_path


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    shipped = resolve_package_path(DEFAULT_SHAREGPT)
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "sharegpt.jsonl"
        with jsonl.open("w") as f:
            for rec in open_source(SourceConfig(), Path("."))[0]:
                if rec.error is None:
                    f.write(json.dumps(rec.data, ensure_ascii=False) + "\n")
        for name, path in (("JSON array", shipped), ("JSONL", jsonl)):
            cfg = SourceConfig(path=str(path))
            size = path.stat().st_size / 1e6
            whole, n = _time(lambda: sum(1 for _ in open_source(cfg, Path("."))[0]))
            plan, specs = _time(lambda: plan_shards(cfg, Path("."), 64 << 20, 2000))
            sharded, m = _time(lambda: sum(sum(1 for _ in read_shard(s)) for s in specs))
            assert m == n
            print(f"{name:10} {size:6.1f} MB  {n:,} records  whole read {whole:.2f} s  plan {plan:.2f} s "
                  f"({len(specs)} shards of <= 2,000 records)  shards read one after another {sharded:.2f} s")


if __name__ == "__main__":
    main()
