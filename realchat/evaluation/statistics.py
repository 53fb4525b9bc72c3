"""Dataset statistics of the paper's §4 for any conversation dataset (building blocks of evaluation).

* MTLD (lexical diversity, threshold 0.72) from ``lexicalrichness``, a maintained implementation;
* distinct-n: unique n-grams / all n-grams over the user turns;
* topic diversity: mean pairwise cosine similarity of turn embeddings (lower = more diverse),
  computed exactly in O(n·d) memory from the sum of unit vectors: for unit vectors v_i,
  sum_{i != j} <v_i, v_j> = ||sum v_i||^2 - n, so no n×n matrix is ever built;
* first-turn diversity: the same on each conversation's first user turn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np


def mtld(texts: Iterable[str], threshold: float = 0.72) -> float:
    """MTLD of the concatenated texts (bidirectional, as McCarthy & Jarvis 2010)."""
    from lexicalrichness import LexicalRichness

    text = "\n".join(texts)
    lex = LexicalRichness(text)
    if lex.words < 2:
        return 0.0
    return float(lex.mtld(threshold=threshold))


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
    if n < 2 or total is None:
        return float("nan")
    return float((total @ total - n) / (n * (n - 1)))


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


def conversation_stats(conversations: Sequence[list[dict[str, str]]], count_tokens: Any) -> dict[str, Any]:
    """:func:`shape_statistics` plus the lexical diversity of the user turns (MTLD, distinct-n)."""
    users = user_turns(conversations)
    return {**shape_statistics(conversations, count_tokens),
            "mtld_user": round(mtld(users), 2) if users else None,
            "distinct_1_user": round(distinct_n(users, 1), 4), "distinct_2_user": round(distinct_n(users, 2), 4)}
