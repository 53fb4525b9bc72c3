"""Benchmark: disk used by a local publish of a model step, hard links vs whole copies.

A model step's folder (SmolLM2-135M de-quantised, as the default recipe's sft steps write it) is
published to a local Hub-like folder twice: once on the same filesystem (files hard-linked from the
run folder) and once with the copy that other filesystems fall back to. Prints ``du`` of run folder +
publish folder together (du counts a hard-linked file once). Not a test: figures vary with the machine.

    python bench/bench_publish_disk.py [--model FOLDER]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from unittest import mock

from realchat.hub import publish


def du(*paths: Path) -> int:
    out = subprocess.run(["du", "-sbc", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1].split()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a transformers model folder (default: the de-quantised SmolLM2 in the cache)")
    args = ap.parse_args()
    if args.model:
        model = Path(args.model)
    else:
        from realchat.models import materialize_model
        from realchat.recipe.base import DEFAULT_MODEL

        model = Path(materialize_model(DEFAULT_MODEL))
    root = Path(tempfile.mkdtemp(prefix="realchat-bench-publish-"))
    try:
        run = root / "runs" / "step"
        shutil.copytree(model, run)
        (run / "manifest.json").write_text(json.dumps({"step": "step", "fingerprint": "f" * 64}))
        print(f"run folder: {du(run) / 1e6:.1f} MB")
        for how in ("hard links", "copies"):
            hub = root / how.replace(" ", "-")
            patch = (mock.patch("realchat.files.os.link", side_effect=OSError("no links"))
                     if how == "copies" else mock.patch("realchat.files.os.link", wraps=__import__("os").link))
            t = time.perf_counter()
            with patch:
                publish._publish_local(hub / "ns" / "step", run, "card", "f" * 64, log=lambda m: None)
            secs = time.perf_counter() - t
            print(f"{how:>10}: run + published {du(run, hub) / 1e6:.1f} MB "
                  f"(published adds {(du(run, hub) - du(run)) / 1e6:.1f} MB), {secs:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
