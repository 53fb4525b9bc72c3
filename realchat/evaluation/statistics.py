"""Dataset statistics of the paper's §4 for any conversation dataset (building blocks of evaluation).

Where the paper's code (PlatoLM's ``lexical-diversity.py`` and ``topic-diversity.py``) defines a
figure differently from ours, both are computed and named for what they are:

* MTLD (threshold 0.72, ``lexicalrichness``): ``mtld_paper`` is the paper's, the mean over user
  turns of each turn's MTLD, skipping turns where it is undefined (no words: lexicalrichness divides by
  zero); ``mtld_joined`` is the MTLD of all user turns joined into one text (RealChat's earlier figure,
  dominated by long turns and cross-turn repetition);
* distinct-n: unique n-grams / all n-grams over the user turns;
* topic diversity, from the embeddings' unit vectors v_i and their sum s, in O(n·d) memory (no n×n
  matrix): ``cosine_pairs`` is the mean over distinct pairs, (||s||² − n) / (n(n − 1)); ``cosine_paper``
  the mean of the full n×n cosine matrix, diagonal included, ||s||² / n², as the paper's
  ``np.mean(1 - cdist(E, E, 'cosine'))``. Lower = more diverse; the paper's figure is pulled up by 1/n;
* first-turn diversity as UserLM computes it: 1 − mean pairwise Jaccard similarity of the lower-cased
  word sets of the first user turns (higher = more diverse), with a bootstrap interval.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np


def mtld(texts: Iterable[str], threshold: float = 0.72) -> float:
    """MTLD of the concatenated texts (bidirectional, as McCarthy & Jarvis 2010): ``mtld_joined``."""
    from lexicalrichness import LexicalRichness

    text = "\n".join(texts)
    lex = LexicalRichness(text)
    if lex.words < 2:
        return 0.0
    return float(lex.mtld(threshold=threshold))


def mtld_per_text(texts: Iterable[str], threshold: float = 0.72) -> dict[str, Any]:
    """The paper's MTLD: the mean of each text's own MTLD, texts where it is undefined skipped
    (PlatoLM's ``lexical-diversity.py`` skips on ZeroDivisionError: a text without words)."""
    from lexicalrichness import LexicalRichness

    values: list[float] = []
    skipped = 0
    for t in texts:
        try:
            values.append(float(LexicalRichness(t).mtld(threshold=threshold)))
        except ZeroDivisionError:
            skipped += 1
    return {"mean": float(np.mean(values)) if values else None, "texts": len(values), "skipped": skipped}


def distinct_n(texts: Iterable[str], n: int) -> float:
    total = 0
    seen: set[tuple[str, ...]] = set()
    for t in texts:
        words = t.lower().split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def mean_pairwise_cosine(vectors: Iterable[np.ndarray] | np.ndarray) -> float:
    """Mean cosine similarity over all pairs i != j, streaming over row blocks."""
    return cosine_means(vectors)["pairs"]


def cosine_means(vectors: Iterable[np.ndarray] | np.ndarray) -> dict[str, float]:
    """Both means of the cosine-similarity matrix from one pass over row blocks: ``pairs`` (i != j)
    and ``paper`` (the full n×n matrix, diagonal included). NaN where undefined."""
    total: np.ndarray | None = None
    n = 0
    blocks = [vectors] if isinstance(vectors, np.ndarray) else vectors
    for block in blocks:
        block = np.atleast_2d(np.asarray(block, dtype=np.float64))
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        unit = block / np.where(norms == 0, 1, norms)
        s = unit.sum(axis=0)
        total = s if total is None else total + s
        n += unit.shape[0]
    if total is None or n == 0:
        return {"pairs": float("nan"), "paper": float("nan")}
    squared = float(total @ total)
    return {"pairs": (squared - n) / (n * (n - 1)) if n > 1 else float("nan"), "paper": squared / (n * n)}


_WORD = re.compile(r"\w+")


def word_set(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def jaccard_matrix(texts: Sequence[str]) -> np.ndarray:
    """n×n Jaccard similarities of the texts' lower-cased word sets (two empty sets: similarity 1).
    From a sparse word-incidence matrix: |A ∩ B| = X Xᵀ, |A ∪ B| = |A| + |B| − |A ∩ B|."""
    from scipy.sparse import csr_matrix

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, t in enumerate(texts):
        for w in word_set(t):
            rows.append(i)
            cols.append(vocab.setdefault(w, len(vocab)))
    x = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), max(len(vocab), 1)))
    inter = (x @ x.T).toarray()
    sizes = np.diag(inter)
    union = sizes[:, None] + sizes[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def first_turn_diversity(first_turns: Sequence[str], bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """UserLM's first-turn diversity: 1 − mean pairwise Jaccard similarity of word sets, over distinct
    pairs, with a 95 % bootstrap interval over the turns. A bootstrap sample holds copies of one turn;
    pairs of a turn with its own copy are left out (they would count as identical), so each draw is
    the same statistic on the distinct turns drawn, weighted by their counts."""
    n = len(first_turns)
    if n < 2:
        return {"value": None, "ci95": None, "n": n}
    sim = jaccard_matrix(first_turns)
    np.fill_diagonal(sim, 0.0)
    point = 1 - sim.sum() / (n * (n - 1))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        c = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        pairs = c.sum() ** 2 - (c * c).sum()
        if pairs > 0:
            draws.append(1 - (c @ sim @ c) / pairs)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"value": round(float(point), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "n": n}


def user_turns(conversations: Sequence[list[dict[str, str]]], first_only: bool = False) -> list[str]:
    out = []
    for msgs in conversations:
        users = [m["content"] for m in msgs if m["role"] == "user"]
        out.extend(users[:1] if first_only else users)
    return out


def shape_statistics(conversations: Sequence[list[dict[str, str]]],
                     count_tokens: Callable[[list[str]], list[int]]) -> dict[str, Any]:
    """The paper's §4 shape figures: rounds (user turns), tokens per user / assistant turn, per
    utterance and per conversation, and the rounds histogram. One implementation for every place
    that shows them (a simulation's card, the evaluation report)."""
    rounds, per_user, per_asst, per_conv = [], [], [], []
    for msgs in conversations:
        body = [m for m in msgs if m["role"] != "system"]
        counts = count_tokens([m["content"] for m in body]) if body else []
        for m, n in zip(body, counts):
            (per_user if m["role"] == "user" else per_asst).append(n)
        per_conv.append(sum(counts))
        rounds.append(sum(1 for m in body if m["role"] == "user"))

    def mean(xs: list[int]) -> float | None:
        return round(float(np.mean(xs)), 1) if xs else None

    hist: dict[str, int] = {}
    for n in sorted(rounds):
        hist[str(n)] = hist.get(str(n), 0) + 1
    return {"conversations": len(conversations), "mean_rounds": mean(rounds), "rounds_histogram": hist,
            "tokens_per_user_turn": mean(per_user), "tokens_per_assistant_turn": mean(per_asst),
            "tokens_per_utterance": mean(per_user + per_asst), "tokens_per_conversation": mean(per_conv)}


def conversation_stats(conversations: Sequence[list[dict[str, str]]], count_tokens: Any,
                       bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """:func:`shape_statistics` plus the lexical diversity of the user turns (MTLD the paper's way and
    joined, distinct-n) and first-turn diversity (Jaccard). No embeddings: see :func:`topic_statistics`."""
    users = user_turns(conversations)
    firsts = user_turns(conversations, first_only=True)
    paper = mtld_per_text(users)
    ftd = first_turn_diversity(firsts, bootstrap, seed)
    return {**shape_statistics(conversations, count_tokens),
            "mtld_paper": round(paper["mean"], 2) if paper["mean"] is not None else None,
            "mtld_paper_skipped_turns": paper["skipped"],
            "mtld_joined": round(mtld(users), 2) if users else None,
            "distinct_1_user": round(distinct_n(users, 1), 4), "distinct_2_user": round(distinct_n(users, 2), 4),
            "first_turn_diversity": ftd["value"], "first_turn_diversity_ci95": ftd["ci95"]}


def topic_statistics(user_embeddings: np.ndarray, first_embeddings: np.ndarray) -> dict[str, Any]:
    """Topic diversity of the user turns and of the first user turns, both means (see module doc)."""
    def r(x: float) -> float | None:
        return None if x != x else round(x, 4)  # NaN (too few turns) → None

    users, firsts = cosine_means(user_embeddings), cosine_means(first_embeddings)
    return {"topic_cosine_pairs": r(users["pairs"]), "topic_cosine_paper": r(users["paper"]),
            "first_turn_cosine": r(firsts["pairs"]), "first_turn_cosine_paper": r(firsts["paper"])}
