"""near_dedup: MinHash LSH over the user turns (datasketch's signatures, computed a chunk at a time; numpy banding).

Near-duplicates are the same request with a typo fixed, a name changed, a paragraph added: ShareGPT
has many, because users shared the same prompt templates. Each conversation's normalised user text is
cut into word ``shingle_size``-grams and hashed into a MinHash of ``num_perm`` permutations
(datasketch). The signature is cut into the ``b`` bands of ``r`` rows that datasketch's ``MinHashLSH``
chooses for the declared Jaccard ``threshold``; two conversations whose signatures agree on a whole
band are candidates, confirmed by their estimated Jaccard (the share of equal signature values, as
``MinHash.jaccard``), joined into clusters (connected components), and the first conversation of each
cluster in source order is kept. Rejected rows carry the estimated Jaccard with the conversation that
matched them (the best earlier one; for a row joined to its cluster only through later rows, the best
later one) and that conversation's id; the counters report the clusters and their largest size.

The op is ``global``: it sees every chunk (:meth:`NearDedup.observe`) before deciding any. Signatures
go to an anonymous temporary file (4 bytes per permutation per conversation: 512 MB for a million
conversations at 128 permutations, on disk, gone with the process even after kill -9); memory holds
one 64-bit key per band per conversation and the ids. Candidate pairs are found per band by sorting
the band keys, and verified in batches against the signature file. A bucket larger than
``_BUCKET_CAP`` rows (thousands of copies of one text, which exact dedup usually removed before)
compares each row with the ``_BUCKET_CAP`` rows before it instead of with all of them.

With ``reference`` (an earlier release), the reference's conversations come first, ahead of every new
one: a cluster that holds a reference conversation keeps none of the new ones, and their detail names
the reference (``near-duplicate of X in reference curate_2023``).
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from realchat.curation.ops.base import Filter, OpParams, OpResult
from realchat.curation.ops.exact_dedup import normalised_user_text
from realchat.recipe.refs import DatasetRef

_BUCKET_CAP = 2_000
_VERIFY_BATCH = 100_000
#: Shingles hashed and permuted together: 32,768 x 128 permutations x 4 bytes = 16 MB at a time.
_SHINGLE_BLOCK = 32_768
_FNV = np.uint64(0x100000001B3)


class Params(OpParams):
    op: Literal["near_dedup"] = "near_dedup"
    #: Words per shingle of the normalised user text.
    shingle_size: int = Field(5, ge=1)
    #: MinHash permutations (more: a finer Jaccard estimate, slower).
    num_perm: int = Field(128, ge=16, le=1024)
    #: Estimated Jaccard similarity of user text at which two conversations are near-duplicates.
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    #: Seed of the MinHash permutations.
    seed: int = Field(1, ge=0, lt=2**32)
    #: An earlier release whose conversations are not to be repeated (see ``exact_dedup``).
    reference: DatasetRef | None = None  # type: ignore[valid-type]


def shingles(text: str, size: int) -> set[bytes]:
    words = text.split()
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {s.encode() for s in map(" ".join, zip(*(words[k:] for k in range(size))))}


def _permutations(p: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """datasketch's own permutation parameters ``(a, b)`` for ``num_perm`` and ``seed`` when its scheme
    is the one :func:`signatures` reproduces (``affine32``: sha1's first 4 bytes, the MurmurHash3
    finaliser, ``a * h + b`` wrapping at 2**32); None for any other scheme (then datasketch computes)."""
    from datasketch import MinHash
    from datasketch.hashfunc import sha1_hash32

    m = MinHash(num_perm=p.num_perm, seed=p.seed)
    if getattr(m, "scheme", None) != "affine32" or m.hashfunc is not sha1_hash32:
        return None
    a, b = m.permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (what datasketch's ``affine32`` scheme mixes each hash with)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(texts: list[str], p: Any) -> np.ndarray:
    """``[len(texts), num_perm]`` uint32 MinHash values, datasketch's for the same seed and shingles.

    Why not ``MinHash.generator``: it takes one text at a time, and the per-text numpy calls and the
    ``struct.unpack`` per shingle were most of near dedup's time. Here every shingle of the chunk is
    hashed into one array (sha1's first 4 bytes, little-endian, as datasketch's ``sha1_hash32``), and
    the permutations and the minimum per text are whole-array operations over blocks of shingles
    (``np.minimum.reduceat`` at the texts' boundaries). uint32 arithmetic wraps at 2**32 exactly as
    datasketch's does, so the values are the same bit for bit (``tests/test_curate_speed.py`` checks it on
    the shipped conversations)."""
    perms = _permutations(p)
    if perms is None:  # another datasketch scheme: its own code, one text at a time
        from datasketch import MinHash

        sigs = np.zeros((len(texts), p.num_perm), dtype=np.uint32)
        gen = MinHash.generator((list(shingles(t, p.shingle_size)) for t in texts), num_perm=p.num_perm, seed=p.seed)
        for k, m in enumerate(gen):
            sigs[k] = m.hashvalues
        return sigs
    a, b = perms
    sigs = np.empty((len(texts), p.num_perm), dtype=np.uint32)
    sha1 = hashlib.sha1
    done = 0
    while done < len(texts):
        # a block of texts whose shingles are about _SHINGLE_BLOCK (one text alone may be more)
        counts: list[int] = []
        digests: list[bytes] = []
        while done + len(counts) < len(texts) and (not counts or len(digests) < _SHINGLE_BLOCK):
            grams = shingles(texts[done + len(counts)], p.shingle_size)
            counts.append(len(grams))  # never 0: an empty text is one empty shingle
            digests.extend(sha1(g).digest()[:4] for g in grams)
        hv = _fmix32(np.frombuffer(b"".join(digests), dtype="<u4").astype(np.uint32))
        starts = np.concatenate(([0], np.cumsum(counts[:-1]))).astype(np.int64)
        block = np.full((len(counts), p.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        for s in range(0, hv.size, _SHINGLE_BLOCK):  # a text's shingles may span several slices
            e = min(s + _SHINGLE_BLOCK, hv.size)
            first = int(np.searchsorted(starts, s, "right")) - 1
            last = int(np.searchsorted(starts, e, "left"))  # texts first..last-1 have shingles here
            local = np.maximum(starts[first:last], s) - s
            part = np.minimum.reduceat(hv[s:e, None] * a + b, local, axis=0)
            np.minimum(block[first:last], part, out=block[first:last])
        sigs[done:done + len(counts)] = block
        done += len(counts)
    return sigs


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``[n, bands]`` 64-bit keys, one per band (FNV-1a over the band's values): equal bands, equal keys."""
    keys = np.zeros((sigs.shape[0], bands), dtype=np.uint64)
    for b in range(bands):
        h = np.full(sigs.shape[0], np.uint64(0xCBF29CE484222325))
        for c in range(b * rows, (b + 1) * rows):
            h = (h ^ sigs[:, c].astype(np.uint64)) * _FNV
        keys[:, b] = h
    return keys


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """Unique ``a * n + b`` codes (a < b) of every pair that shares a band key."""
    n = keys.shape[0]
    codes: list[np.ndarray] = []
    for band in range(keys.shape[1]):
        order = np.argsort(keys[:, band], kind="stable")
        sorted_keys = keys[order, band]
        cuts = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        starts = np.concatenate(([0], cuts))
        lengths = np.diff(np.concatenate((starts, [n])))
        for length in np.unique(lengths[lengths > 1]):
            run_starts = starts[lengths == length]
            if length <= _BUCKET_CAP:
                i, j = np.triu_indices(int(length), 1)
            else:  # each row against the _BUCKET_CAP rows before it
                j = np.repeat(np.arange(1, length), np.minimum(np.arange(1, length), _BUCKET_CAP))
                i = np.concatenate([np.arange(max(0, k - _BUCKET_CAP), k) for k in range(1, length)])
            x, y = order[run_starts[:, None] + i], order[run_starts[:, None] + j]
            codes.append((np.minimum(x, y).astype(np.int64) * n + np.maximum(x, y)).ravel())
    return np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int64)


def verify(codes: np.ndarray, sigs: np.ndarray, bands: int, rows: int, threshold: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pairs that really share a band and reach ``threshold``: ``(a, b, jaccard)``."""
    n, perms = sigs.shape
    out_a, out_b, out_j = [], [], []
    for s in range(0, codes.size, _VERIFY_BATCH):
        c = codes[s:s + _VERIFY_BATCH]
        a, b = c // n, c % n
        eq = sigs[a] == sigs[b]
        jac = np.count_nonzero(eq, axis=1) / np.float64(perms)
        band_equal = eq[:, :bands * rows].reshape(-1, bands, rows).all(axis=2).any(axis=1)
        ok = band_equal & (jac >= threshold)
        out_a.append(a[ok])
        out_b.append(b[ok])
        out_j.append(jac[ok])
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_j)


def clusters(n: int, a: np.ndarray, b: np.ndarray, jac: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From verified pairs (``a < b``) over ``n`` rows: each row's cluster root (the cluster's earliest
    row), the row that matched it best and that Jaccard. The match is the best earlier row (ties: the
    earliest); a row with no earlier match, joined through later rows, takes its best later one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    roots = first[labels]
    best = np.zeros(n)
    match = np.full(n, -1, dtype=np.int64)
    for node, other in ((b, a), (a, b)):  # earlier matches first; later ones only where none
        order = np.lexsort((other, -jac, node))  # by node, then best Jaccard, then earliest partner
        node_s, other_s, jac_s = node[order], other[order], jac[order]
        head = np.concatenate(([True], node_s[1:] != node_s[:-1])) if node_s.size else node_s.astype(bool)
        take = head & (match[node_s] == -1)
        best[node_s[take]] = jac_s[take]
        match[node_s[take]] = other_s[take]
    return roots, match, best


class NearDedup(Filter):
    Params = Params
    scope = "global"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from datasketch import MinHashLSH  # here, not at import: it pulls in scipy (0.7 s of a worker's start)

        p: Params = self.params  # type: ignore[assignment]
        lsh = MinHashLSH(threshold=p.threshold, num_perm=p.num_perm)  # datasketch's choice of bands
        self.bands, self.rows = lsh.b, lsh.r
        self.id_chunks: list[pl.Series] = []  # Arrow strings: a few bytes per id, not a Python object
        self.observed = 0
        self.keys: list[np.ndarray] = []
        self.sig_file = tempfile.TemporaryFile(prefix="realchat-minhash-")
        self.decided = False
        self.offset = 0  # rows of the new data already decided by apply
        ref = self.inputs.get("reference")
        self.ref_rows = 0
        if ref is not None:  # the reference goes first: its rows are the roots of their clusters
            self.observe(ref.table)
            self.ref_rows = ref.table.height

    @classmethod
    def prepare(cls, params: OpParams, table: pl.DataFrame) -> np.ndarray:
        texts = table.select(normalised_user_text(table, True, False).alias("t"))["t"].to_list()
        return signatures(texts, params)

    def observe(self, table: pl.DataFrame, prepared: Any = None) -> None:
        sigs = prepared if prepared is not None else self.prepare(self.params, table)
        self.sig_file.write(sigs.tobytes())
        self.keys.append(band_keys(sigs, self.bands, self.rows))
        self.id_chunks.append(table["conversation_id"])
        self.observed += table.height

    def _decide(self) -> None:
        p: Params = self.params  # type: ignore[assignment]
        n = self.observed
        self.ids = pl.concat(self.id_chunks) if self.id_chunks else pl.Series(dtype=pl.String)
        self.id_chunks = []
        self.sig_file.flush()
        if n:
            sigs = np.memmap(self.sig_file, dtype=np.uint32, mode="r", shape=(n, p.num_perm))
            a, b, jac = verify(candidate_pairs(np.concatenate(self.keys)), sigs, self.bands, self.rows, p.threshold)
            del sigs
        else:
            a = b = np.zeros(0, np.int64)
            jac = np.zeros(0)
        self.sig_file.close()
        self.keys = []
        self.roots, self.match, self.best = clusters(n, a, b, jac)
        self.decided = True

    def apply(self, table: pl.DataFrame) -> OpResult:
        if not self.decided:
            if self.observed == self.ref_rows:  # used on one whole table: observe it first
                self.observe(table)
            self._decide()
        ref = self.inputs.get("reference")
        r = self.ref_rows
        pos = np.arange(r + self.offset, r + self.offset + table.height)
        self.offset += table.height
        roots = self.roots[pos]
        keep = roots == pos
        gone = np.flatnonzero(~keep)
        root_ids = self.ids.gather(roots[gone]).to_list()
        match_ids = self.ids.gather(self.match[pos[gone]]).to_list()
        where = [f" in reference {ref.name}" if root < r else "" for root in roots[gone]]  # type: ignore[union-attr]
        detail: list[str | None] = [None] * table.height
        for k, root_id, match_id, w in zip(gone, root_ids, match_ids, where):
            detail[k] = f"near-duplicate of {root_id}{w} (matched {match_id})"
        result = self.partition(table, keep.tolist(), self.best[pos].tolist(), detail)
        if ref is not None:
            result.counters["in_reference"] = int(np.count_nonzero(roots < r))
        return result

    def totals(self) -> dict[str, int]:
        if not self.decided:
            return {}
        r = self.ref_rows
        roots, counts = np.unique(self.roots[r:], return_counts=True)
        in_ref = roots < r
        sizes = (counts + in_ref)[(counts > 1) | in_ref]
        return {"duplicate_clusters": int(sizes.size), "largest_cluster": int(sizes.max()) if sizes.size else 1}
