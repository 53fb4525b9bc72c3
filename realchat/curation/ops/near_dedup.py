"""near_dedup: MinHash LSH over the user turns (datasketch).

Near-duplicates are the same request with a typo fixed, a name changed, a paragraph added: ShareGPT
has many, because users shared the same prompt templates. Each conversation's normalised user text is
cut into word ``shingle_size``-grams, hashed into a MinHash of ``num_perm`` permutations and indexed in
an LSH with the declared Jaccard ``threshold``. Candidate pairs are confirmed by their estimated
Jaccard, joined into clusters (connected components), and the first conversation of each cluster in
source order is kept. Rejected rows carry the estimated Jaccard with the conversation that matched
them and that conversation's id; the counters report the number of clusters and their largest size.

With ``reference`` (an earlier release), the reference's conversations enter the index first, ahead
of every new one: a cluster that holds a reference conversation keeps none of the new ones, and their
detail names the reference (``near-duplicate of X in reference curate_2023``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from datasketch import MinHash, MinHashLSH
from pydantic import Field

from realchat.curation.ops.base import Filter, OpParams, OpResult
from realchat.curation.ops.exact_dedup import normalised_user_text
from realchat.recipe.refs import DatasetRef


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
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller index (earlier in source order) becomes the root
            self.parent[max(ra, rb)] = min(ra, rb)


class NearDedup(Filter):
    Params = Params

    def apply(self, table: pl.DataFrame) -> OpResult:
        p: Params = self.params  # type: ignore[assignment]
        ref = self.inputs.get("reference")
        ref_texts: list[str] = []
        ref_ids: list[str] = []
        if ref is not None:  # the reference goes first: its rows are the roots of their clusters
            ref_texts = ref.table.select(normalised_user_text(ref.table, True, False).alias("t"))["t"].to_list()
            ref_ids = ref.table["conversation_id"].to_list()
        r = len(ref_texts)
        texts = ref_texts + table.select(normalised_user_text(table, True, False).alias("t"))["t"].to_list()
        n = len(texts)
        # MinHash.generator shares one set of permutations across all signatures.
        signatures: list[MinHash] = list(
            MinHash.generator(
                self.progress((list(shingles(t, p.shingle_size)) for t in texts),
                                      "near_dedup: minhash", total=n),
                num_perm=p.num_perm,
                seed=p.seed,
            )
        )
        lsh = MinHashLSH(threshold=p.threshold, num_perm=p.num_perm)
        uf = _UnionFind(n)
        best = np.zeros(n)
        match = [-1] * n
        for i, m in enumerate(signatures):
            for j in lsh.query(m):
                jac = m.jaccard(signatures[j])
                if jac >= p.threshold:
                    uf.union(i, j)
                    if jac > best[i] or (jac == best[i] and j < match[i]):  # ties: the earliest
                        best[i], match[i] = jac, j
            lsh.insert(i, m)
        roots = [uf.find(i) for i in range(n)]
        keep = [roots[i] == i for i in range(r, n)]
        ids = ref_ids + table["conversation_id"].to_list()

        def why(i: int) -> str:
            if roots[i] < r:
                return (f"near-duplicate of {ids[roots[i]]} in reference {ref.name} "  # type: ignore[union-attr]
                        f"(matched {ids[match[i]]})")
            return f"near-duplicate of {ids[roots[i]]} (matched {ids[match[i]]})"

        detail = [None if keep[i - r] else why(i) for i in range(r, n)]
        sizes: dict[int, int] = {}
        for i in range(r, n):
            sizes[roots[i]] = sizes.get(roots[i], 0) + 1
        multi = [s + (1 if root < r else 0) for root, s in sizes.items() if s > 1 or root < r]
        result = self.partition(table, keep, [float(b) for b in best[r:]], detail)
        result.counters.update(
            {"duplicate_clusters": len(multi), "largest_cluster": max(multi, default=1)}
        )
        if ref is not None:
            result.counters["in_reference"] = sum(1 for i in range(r, n) if roots[i] < r)
        return result
