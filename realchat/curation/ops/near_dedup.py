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

import importlib.metadata
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field

from realchat.curation.ops.base import Filter, OpParams, OpResult
from realchat.curation.ops.exact_dedup import normalised_user_text
from realchat.recipe.refs import DatasetRef

_BUCKET_CAP = 2_000
_VERIFY_BATCH = 100_000
_FNV = np.uint64(0x100000001B3)
#: datasketch's answers this process has read or asked for (see :func:`_datasketch_answer`)
_ASKED: dict[str, dict[str, Any]] = {}


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

    def ask_datasketch() -> dict[str, Any]:
        from datasketch import MinHash
        from datasketch.hashfunc import sha1_hash32

        m = MinHash(num_perm=p.num_perm, seed=p.seed)
        if getattr(m, "scheme", None) != "affine32" or m.hashfunc is not sha1_hash32:
            return {"a": None, "b": None}
        a, b = m.permutations
        return {"a": [int(x) for x in a], "b": [int(x) for x in b]}

    found = _datasketch_answer(f"permutations-{p.num_perm}-{p.seed}", ask_datasketch, ("a", "b"))
    if found["a"] is None:
        return None
    return np.array(found["a"], dtype=np.uint32), np.array(found["b"], dtype=np.uint32)


def _bands_and_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    """The bands and rows that datasketch's ``MinHashLSH`` chooses for ``threshold`` and ``num_perm``."""

    def ask_datasketch() -> dict[str, Any]:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        return {"bands": lsh.b, "rows": lsh.r}

    found = _datasketch_answer(f"lsh-{threshold!r}-{num_perm}", ask_datasketch, ("bands", "rows"))
    return int(found["bands"]), int(found["rows"])


def _datasketch_answer(question: str, ask: Callable[[], dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """What datasketch answers to ``question``, kept in RealChat's cache per datasketch version.

    Why a cache: importing datasketch costs 0.5 s (it imports ``scipy.integrate`` for the LSH's
    optimum), paid by every build and by every worker process, for a few numbers that depend only on
    the parameters and the version. A missing or unreadable entry, or one without ``keys``, is asked
    again; entries are written whole (a temporary file, then a rename), so concurrent builds never
    read half of one."""
    from realchat.models import cache_dir

    if question in _ASKED:  # prepare runs once a chunk: the file is read once a process
        return _ASKED[question]
    key = f"datasketch-{importlib.metadata.version('datasketch')}-{question}"
    path = cache_dir() / "minhash" / f"{key}.json"
    try:
        answer = json.loads(path.read_text())
        if isinstance(answer, dict) and all(k in answer for k in keys):
            _ASKED[question] = answer
            return answer
    except (OSError, ValueError):
        pass
    _ASKED[question] = answer = ask()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(answer))
        os.replace(tmp, path)
    except OSError:  # a read-only cache: asked again next time
        pass
    return answer


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (what datasketch's ``affine32`` scheme mixes each hash with)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def shingle_hashes(texts: pl.Series, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every text's shingles hashed as datasketch's ``sha1_hash32`` hashes them (sha1's first 4 bytes,
    little-endian): ``(hashes, starts)``, the texts' hashes one after another and where each text's begin.

    The same shingles as :func:`shingles` (a text of fewer than ``size`` words is one shingle, its words
    joined; an empty text is one empty shingle), in word order, repeats not removed (a minimum does not
    care). Words split where Python's ``str.split()`` splits: Unicode white space plus the four
    information separators U+001C-U+001F, which Python counts as white space and Rust's ``\\s`` does not
    (``tests/test_curate_speed.py`` checks every code point); a chunk whose texts are already one space
    between words (near dedup normalises them so) is split at the spaces. Why polars and ``polars-hash``: the words,
    the shingles and sha1 run in Rust on every core (polars' streaming engine), where Python's
    ``hashlib`` one shingle at a time was most of near dedup's time."""
    import polars_hash as plh

    texts = texts.fill_null("")
    if texts.str.contains(r"[^\S ]|[\x1c-\x1f]|  |^ | $").any():
        words = pl.col("t").str.extract_all(r"[^\s\x1c-\x1f]+")
    else:  # one space between words, none around (near dedup's own texts): a plain split, 4x cheaper
        words = pl.col("t").str.split(" ")
    short = words.list.len() < size  # one shingle, the words joined: a list of one (never empty)
    shingled = (
        pl.LazyFrame({"t": texts}, schema={"t": pl.String}).with_row_index("d")
        .select("d", short.alias("short"), pl.when(short).then(pl.concat_list(words.list.join(" ")))
                .otherwise(words).alias("w"))
        .explode("w")
        .select(
            "d",
            pl.when(pl.col("short")).then(pl.col("w"))
            .otherwise(pl.concat_str([pl.col("w").shift(-k) for k in range(size)], separator=" ")).alias("g"),
            (pl.col("short") | pl.col("d").shift(-(size - 1)).eq_missing(pl.col("d"))).alias("first_of_shingle"),
        )
        .filter(pl.col("first_of_shingle"))
        .select("d", plh.col("g").nchash.sha1().str.slice(0, 8).str.to_integer(base=16).cast(pl.UInt32).alias("h"))
        .collect(engine="streaming")
    )
    hashes = shingled["h"].to_numpy().byteswap()  # the hex reads big-endian; datasketch unpacks "<I"
    counts = np.bincount(shingled["d"].to_numpy(), minlength=len(texts))
    return hashes, np.concatenate(([0], np.cumsum(counts[:-1]))).astype(np.int64)


def signatures(texts: Sequence[str] | pl.Series, p: Any) -> np.ndarray:
    """``[len(texts), num_perm]`` uint32 MinHash values, datasketch's for the same seed and shingles.

    Why not ``MinHash.generator``: it takes one text at a time, with numpy calls per text and a
    ``struct.unpack`` per shingle. Here the chunk's shingles are hashed at once (:func:`shingle_hashes`)
    and each permutation is one pass over all of them (``a * h + b``, then ``np.minimum.reduceat`` at the
    texts' starts), the permutations shared among polars' threads (numpy lets go of the GIL; a worker
    process keeps to one). uint32 arithmetic wraps at 2**32 exactly as datasketch's does, so the values
    are the same bit for bit (``tests/test_curate_speed.py`` checks it on the shipped conversations)."""
    if not isinstance(texts, pl.Series):
        texts = pl.Series("t", list(texts), dtype=pl.String)
    perms = _permutations(p)
    if perms is None:  # another datasketch scheme: its own code, one text at a time
        from datasketch import MinHash

        sigs = np.zeros((len(texts), p.num_perm), dtype=np.uint32)
        gen = MinHash.generator((list(shingles(t, p.shingle_size)) for t in texts), num_perm=p.num_perm, seed=p.seed)
        for k, m in enumerate(gen):
            sigs[k] = m.hashvalues
        return sigs
    a, b = perms
    by_perm = np.empty((p.num_perm, len(texts)), dtype=np.uint32)
    if not len(texts):
        return by_perm.T.copy()
    hashes, starts = shingle_hashes(texts, p.shingle_size)
    hashes = _fmix32(hashes)

    def permute(ks: range) -> None:
        buf = np.empty_like(hashes)
        for k in ks:
            np.multiply(hashes, a[k], out=buf)
            np.add(buf, b[k], out=buf)
            by_perm[k] = np.minimum.reduceat(buf, starts)

    threads = max(1, min(pl.thread_pool_size(), p.num_perm))
    share = -(-p.num_perm // threads)
    parts = [range(k, min(k + share, p.num_perm)) for k in range(0, p.num_perm, share)]
    if len(parts) == 1:
        permute(parts[0])
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            list(pool.map(permute, parts))
    return np.ascontiguousarray(by_perm.T)


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
        p: Params = self.params  # type: ignore[assignment]
        self.bands, self.rows = _bands_and_rows(p.threshold, p.num_perm)  # datasketch's choice of bands
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
        return signatures(table.select(normalised_user_text(table, True, False).alias("t"))["t"], params)

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
