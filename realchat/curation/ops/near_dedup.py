"""near_dedup: MinHash LSH over the user turns (datasketch).

Near-duplicates are the same request with a typo fixed, a name changed, a paragraph added: ShareGPT
has many, because users shared the same prompt templates. Each conversation's normalised user text is
cut into word ``shingle_size``-grams, hashed into a MinHash of ``num_perm`` permutations and indexed in
an LSH with the declared Jaccard ``threshold``. Candidate pairs are confirmed by their estimated
Jaccard, joined into clusters (connected components), and the first conversation of each cluster in
source order is kept. Rejected rows carry the estimated Jaccard with the conversation that matched
them and that conversation's id; the counters report the number of clusters and their largest size.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl
from datasketch import MinHash, MinHashLSH
from pydantic import Field

from realchat.curation.ops.base import Filter, OpParams, OpResult
from realchat.curation.ops.exact_dedup import normalised_user_text


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
        texts = table.select(normalised_user_text(table, True, False).alias("t"))["t"].to_list()
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
                    if jac > best[i]:
                        best[i], match[i] = jac, j
            lsh.insert(i, m)
        roots = [uf.find(i) for i in range(n)]
        keep = [roots[i] == i for i in range(n)]
        ids = table["conversation_id"].to_list()
        detail = [None if keep[i] else f"near-duplicate of {ids[roots[i]]} (matched {ids[match[i]]})"
                  for i in range(n)]
        sizes: dict[int, int] = {}
        for r in roots:
            sizes[r] = sizes.get(r, 0) + 1
        multi = [s for s in sizes.values() if s > 1]
        result = self.partition(table, keep, [float(b) for b in best], detail)
        result.counters.update(
            {"duplicate_clusters": len(multi), "largest_cluster": max(multi, default=1)}
        )
        return result
