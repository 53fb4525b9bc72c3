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
