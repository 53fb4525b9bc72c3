"""Evaluation building blocks against hand-computed values; judge parsing on real judge outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from realchat.cli import app
from realchat.evaluation.judge import parse_pair, parse_score, summarize
from realchat.evaluation.statistics import conversation_stats, distinct_n, mean_pairwise_cosine, mtld


def test_distinct_n_by_hand():
    assert distinct_n(["a b a b"], 1) == 0.5          # {a, b} / 4
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # {ab, ba} / 3
    assert distinct_n([], 2) == 0.0


def test_mtld_by_hand():
    # "a a a ...": the type-token ratio falls to 0.5 at the 2nd word (< 0.72), so a factor ends every
    # 2 words in both directions: 6 words / 3 factors = 2.0
    assert mtld(["a a a a a a"]) == pytest.approx(2.0)
    assert mtld(["the cat sat on a mat while dogs ran far away quickly"]) > mtld(["the the the cat cat cat"])


def test_mean_pairwise_cosine_by_hand_and_streaming():
    v = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    # pairs: (1,2) 0, (1,3) 1, (2,3) 0 -> 1/3
    assert mean_pairwise_cosine(v) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    big = rng.normal(size=(500, 16))
    unit = big / np.linalg.norm(big, axis=1, keepdims=True)
    sims = unit @ unit.T
    brute = (sims.sum() - np.trace(sims)) / (500 * 499)
    assert mean_pairwise_cosine(iter(np.array_split(big, 7))) == pytest.approx(brute)
    assert math.isnan(mean_pairwise_cosine(v[:1]))


def test_conversation_stats():
    convs = [[{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c d e"}],
             [{"role": "system", "content": "s"}, {"role": "user", "content": "f"}]]
    stats = conversation_stats(convs, lambda texts: [len(t.split()) for t in texts])
    assert stats["mean_rounds"] == 1.0 and stats["tokens_per_utterance"] == 2.0
    assert stats["tokens_per_conversation"] == 3.0


@pytest.mark.parametrize("text, score", [
    ("The answer is correct and well explained.\n\nRating: [[8]]", 8.0),
    ("Rating: [[7.5]]", 7.5),
    ("I would rate it [6] overall.", 6.0),
    ("The assistant refused. Rating: 3/10", -1.0),
    ("", -1.0),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text, verdict", [
    ("Assistant A is more detailed ... [[A]]", "A"),
    ("Final verdict: [[B]]", "B"),
    ("Both are equally good. [[C]]", "tie"),
    ("I cannot decide.", "error"),
])
def test_parse_pair(text, verdict):
    assert parse_pair(text) == verdict


def test_eval_show_on_judgment_file(tmp_path):
    rows = [
        {"question_id": 81, "model": "realm", "judge": ["gpt-4", "single-v1"], "score": 8, "turn": 1},
        {"question_id": 81, "model": "realm", "judge": ["gpt-4", "single-v1-multi-turn"], "score": 6, "turn": 2},
        {"question_id": 82, "model": "realm", "judge": ["gpt-4", "single-v1"], "score": -1, "turn": 1},
        {"question_id": 82, "model": "base", "judge": ["gpt-4", "single-v1"], "score": 4, "turn": 1},
        {"question_id": 81, "model_1": "realm", "model_2": "base", "g1_winner": "model_1", "g2_winner": "model_1",
         "judge": ["gpt-4", "pair-v2"], "turn": 1},
        {"question_id": 82, "model_1": "realm", "model_2": "base", "g1_winner": "model_1", "g2_winner": "model_2",
         "judge": ["gpt-4", "pair-v2"], "turn": 1},
    ]
    path = tmp_path / "judgments.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = summarize(rows)
    assert result["single"]["realm"] == {"turn_1": 8.0, "turn_2": 6.0, "overall": 7.0, "n": 2, "invalid": 1,
                                         "overall_ci95": [round(7 - 1.96, 4), round(7 + 1.96, 4)]}
    assert result["pairwise"]["realm"]["win"] == 1 and result["pairwise"]["realm"]["tie"] == 1
    assert result["pairwise"]["realm"]["win_rate_adjusted"] == 0.75
    r = CliRunner().invoke(app, ["eval", "show", str(path)])
    assert r.exit_code == 0 and "realm" in r.output and "7.00" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n')
    r = CliRunner().invoke(app, ["eval", "show", str(bad)])
    assert r.exit_code == 2 and "line 1" in r.output


def test_judge_prompts_from_shared_eval_parse_with_our_rules():
    """FastChat's judge prompts (../shared/eval) ask for exactly the formats the parser reads."""
    from pathlib import Path

    prompts = [json.loads(line) for line in
               (Path(__file__).resolve().parents[2] / "shared" / "eval" / "judge_prompts.jsonl").read_text().splitlines()
               if line.strip()]
    single = [p for p in prompts if p["type"] == "single"]
    pair = [p for p in prompts if p["type"] == "pairwise"]
    assert single and pair
    assert all("[[rating]]" in p["system_prompt"] + p["prompt_template"] for p in single)
    assert all("[[A]]" in p["system_prompt"] for p in pair)


def test_judge_quality_position_bias_and_unparsable_pairs_apart():
    """By hand: 4 pairwise rows. Row 1 agrees (model_1 wins); rows 2 and 3 pick answer A in both orders
    (g1 model_1, g2 model_2: position bias); row 4 has an unparsable second order."""
    rows = [{"question_id": q, "model_1": "m", "model_2": "base", "g1_winner": g1, "g2_winner": g2,
             "judge": ["j", "pair-v2"], "turn": 1}
            for q, (g1, g2) in enumerate([("model_1", "model_1"), ("model_1", "model_2"),
                                          ("model_1", "model_2"), ("model_2", "error")])]
    rows.append({"question_id": 0, "model": "m", "judge": ["j", "single-v1"], "score": -1, "turn": 1})
    s = summarize(rows)
    assert s["pairwise"]["m"] == {"win": 1, "tie": 2, "loss": 0, "unparsable": 1, "win_rate": round(1 / 3, 4),
                                  "win_rate_adjusted": round(2 / 3, 4)}  # the error pair is not a tie
    # a model whose every grade is unparsable keeps its row: 0 valid, 1 unparsable, no mean
    assert s["single"]["m"] == {"turn_1": None, "turn_2": None, "overall": None, "n": 0, "invalid": 1,
                                "overall_ci95": None}
    j = s["judges"]["j"]
    # verdicts: 4 pairs × 2 orders + 1 single = 9; unparsable: 1 order + 1 score = 2
    assert (j["questions"], j["verdicts"], j["unparsable"], j["pairs_both_parsed"]) == (4, 9, 2, 3)
    assert j["unparsable_share"] == round(2 / 9, 4)
    assert j["position_bias"] == round(2 / 3, 4) and j["second_position_bias"] == 0.0
    assert j["inconsistent"] == round(2 / 3, 4)
    assert not s["ranking"]["can_rank"]
    text = " ".join(s["ranking"]["reasons"])
    assert "position bias" in text and "unparsable" in text and "coin toss" in text


def test_ranking_possible_with_a_consistent_judge_and_separated_scores():
    rows = []
    for q in range(20):
        rows.append({"question_id": q, "model": "good", "judge": ["j", "single-v1"], "score": 8 + q % 2, "turn": 1})
        rows.append({"question_id": q, "model": "bad", "judge": ["j", "single-v1"], "score": 2 + q % 2, "turn": 1})
        rows.append({"question_id": q, "model_1": "good", "model_2": "bad", "g1_winner": "model_1",
                     "g2_winner": "model_1", "judge": ["j", "pair-v2"], "turn": 1})
    s = summarize(rows)
    assert s["single"]["good"]["overall_ci95"][0] > s["single"]["bad"]["overall_ci95"][1]
    assert s["judges"]["j"]["position_bias"] == 0.0 and s["ranking"] == {"can_rank": True, "reasons": []}
    # the same scores from a judge that ties them: intervals overlap, so it cannot rank them
    flat = [dict(r, score=5) if "score" in r else r for r in rows]
    assert "intervals all overlap" in " ".join(summarize(flat)["ranking"]["reasons"])
