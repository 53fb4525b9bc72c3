"""The paper's statistics computed the paper's way, beside ours, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from realchat.evaluation.statistics import (conversation_stats, cosine_means, first_turn_diversity,
                                            jaccard_matrix, mtld, mtld_per_text, topic_statistics)


def test_mtld_paper_is_the_mean_of_per_turn_mtld_skipping_undefined_turns():
    # "a a a a a a": the type-token ratio falls to 1/2 (< 0.72) at every 2nd word: 3 factors in 6
    # words, both directions → 2.0. "a b a b a b": TTR 1, 1, 2/3 (< 0.72) → a factor every 3 words
    # → 3.0 both ways. "" and "!!!" have no words: MTLD is undefined (lexicalrichness divides by
    # zero), PlatoLM's script skips them.
    r = mtld_per_text(["a a a a a a", "", "a b a b a b", "!!!"])
    assert r == {"mean": pytest.approx(2.5), "texts": 2, "skipped": 2}
    # the joined figure is a different number: one text, "a a a a a a\na b a b a b"
    assert mtld(["a a a a a a", "a b a b a b"]) != pytest.approx(2.5)
    assert mtld_per_text(["", "?"]) == {"mean": None, "texts": 0, "skipped": 2}


def test_conversation_stats_names_both_mtld_figures():
    convs = [[{"role": "user", "content": "a a a a a a"}, {"role": "assistant", "content": "x"},
              {"role": "user", "content": "a b a b a b"}],
             [{"role": "user", "content": "..."}]]
    s = conversation_stats(convs, lambda texts: [len(t.split()) for t in texts])
    assert s["mtld_paper"] == 2.5 and s["mtld_paper_skipped_turns"] == 1
    assert s["mtld_joined"] == round(mtld(["a a a a a a", "a b a b a b", "..."]), 2)
    assert "mtld_user" not in s


def test_topic_cosine_paper_equals_the_papers_full_matrix_mean_and_the_identity():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(300, 12))
    paper = float(np.mean(1 - cdist(e, e, "cosine")))  # PlatoLM's topic-diversity.py
    m = cosine_means(iter(np.array_split(e, 5)))        # streamed, O(n·d)
    n = len(e)
    assert m["paper"] == pytest.approx(paper, abs=1e-9)
    # diagonal-inclusive identity: n² · paper = n(n−1) · pairs + n
    assert n * n * m["paper"] == pytest.approx(n * (n - 1) * m["pairs"] + n, rel=1e-9)
    # by hand: (1,0), (0,2), (3,0): pair cosines 0, 1, 0 → pairs 1/3; full matrix (3 + 2·1) / 9 = 5/9
    small = cosine_means(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))
    assert small["pairs"] == pytest.approx(1 / 3) and small["paper"] == pytest.approx(5 / 9)
    t = topic_statistics(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]), np.array([[1.0, 0.0]]))
    assert t["topic_cosine_paper"] == round(5 / 9, 4) and t["first_turn_cosine"] is None
    assert t["first_turn_cosine_paper"] == 1.0


def test_first_turn_diversity_is_one_minus_mean_pairwise_jaccard():
    # word sets {a, b}, {a, c}, {d}: Jaccard 1/3, 0, 0 → mean 1/9 → diversity 8/9
    turns = ["A b!", "a, c", "d"]
    sim = jaccard_matrix(turns)
    assert sim[0, 1] == pytest.approx(1 / 3) and sim[0, 2] == 0 and sim[1, 1] == 1
    r = first_turn_diversity(turns, bootstrap=50)
    assert r["value"] == round(8 / 9, 4) and r["n"] == 3
    assert r["ci95"][0] <= r["value"] <= r["ci95"][1] <= 1
    same = first_turn_diversity(["How do I sort a list?"] * 4 + ["how do i SORT a list"], bootstrap=20)
    assert same["value"] == 0.0 and same["ci95"] == [0.0, 0.0]
    assert first_turn_diversity(["one"])["value"] is None
