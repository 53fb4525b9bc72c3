"""LLM-judge verdicts and FastChat judgment files (MT-Bench / Vicuna-Bench).

Parsing follows FastChat's rules so figures compare with published ones: single-answer grading reads
``[[8]]`` (or ``[8]`` as a fallback) and records -1 when neither is there; pairwise reads ``[[A]]``,
``[[B]]`` or ``[[C]]`` (tie) and records ``error`` otherwise. ``summarize`` reads any FastChat-format
judgment file, ours or published ones: mean score per model and turn over valid scores, and pairwise
win/tie/loss where a verdict counts only when both orders agree (FastChat's position-bias rule).
It also says how good the judge is (questions, unparsable share, position bias) and whether the
figures can rank the models at all, so a weak judge's numbers are never read as findings.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from realchat.errors import RealChatError, cause, user_file

_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_SCORE_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")


#: FastChat's single-answer grades: 1 to 10; -1 marks a verdict without a readable grade.
SCORE_RANGE = (1.0, 10.0)
UNPARSABLE = -1.0


def parse_score(judgment: str) -> float:
    """The grade in a judge's verdict (``[[7]]``); a verdict without one, or with one outside
    1-10 (``[[0]]``, ``[[85]]``), is unparsable (-1) as FastChat counts it."""
    m = _SCORE.search(judgment) or _SCORE_FALLBACK.search(judgment)
    if not m:
        return UNPARSABLE
    try:
        score = float(m.group(1))
    except ValueError:
        return UNPARSABLE
    return score if SCORE_RANGE[0] <= score <= SCORE_RANGE[1] else UNPARSABLE


def parse_pair(judgment: str) -> str:
    """``A``, ``B``, ``tie`` or ``error``."""
    if "[[A]]" in judgment:
        return "A"
    if "[[B]]" in judgment:
        return "B"
    if "[[C]]" in judgment:
        return "tie"
    return "error"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in _numbered_jsonl(path)]


def _numbered_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line; a line that is not JSON is an error naming it."""
    rows = []
    with user_file(path):
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((i, json.loads(line)))
                except (ValueError, RecursionError) as e:
                    raise RealChatError(f"not JSON ({cause(e)})", file=str(path), record=f"line {i}") from None
    return rows


def read_judgments(path: Path) -> list[dict[str, Any]]:
    """Rows of a FastChat judgment file, each checked where :func:`summarize` relies on it: a
    single-answer row's ``score`` is a number and its ``turn`` an integer, a pairwise row names both
    models and its winners as strings. A bad row is an error naming the file, line and key."""
    rows = []
    for i, row in _numbered_jsonl(path):
        def bad(key: str, want: str) -> RealChatError:
            got = row.get(key) if isinstance(row, dict) else row
            return RealChatError(f"expected {want}, got {got!r}", file=str(path), record=f"line {i}",
                                 field=key or None)

        if not isinstance(row, dict):
            raise bad("", "a JSON object (a FastChat judgment)")
        if "score" in row:
            score = row["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise bad("score", "a number (-1 for an unparsable verdict)")
            if not (score == UNPARSABLE or SCORE_RANGE[0] <= score <= SCORE_RANGE[1]):  # NaN, ±Infinity too
                raise bad("score", "a grade from 1 to 10 (-1 for an unparsable verdict)")
            if not isinstance(row.get("turn", 1), int) or isinstance(row.get("turn", 1), bool):
                raise bad("turn", "an integer turn (1 or 2)")
            if not isinstance(row.get("model"), str):
                raise bad("model", "a model name")
        elif "g1_winner" in row:
            for key in ("model_1", "model_2", "g1_winner"):
                if not isinstance(row.get(key), str):
                    raise bad(key, "a string")
            if not isinstance(row.get("g2_winner", ""), str):
                raise bad("g2_winner", "a string")
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], path: str = "judgments") -> dict[str, Any]:
    """Scores, pairwise results, each judge's quality and whether the figures can rank the models.

    Pairwise: a verdict counts when both orders agree; both orders parsed but disagreeing is a tie
    (FastChat's rule); a pair where either order is unparsable is counted apart (``unparsable``), not
    as a tie (FastChat drops it)."""
    single: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    invalid: dict[str, int] = defaultdict(int)
    pair: dict[str, dict[str, int]] = defaultdict(lambda: {"win": 0, "tie": 0, "loss": 0, "unparsable": 0})
    for i, r in enumerate(rows, 1):
        if "score" in r and "model" in r:
            if float(r["score"]) < 0:
                invalid[r["model"]] += 1
                single[r["model"]]  # a model whose grades are all unparsable still has its row (0 valid)
            else:
                single[r["model"]][int(r.get("turn", 1))].append(float(r["score"]))
        elif "model_1" in r and "g1_winner" in r:
            g1, g2 = r["g1_winner"], r.get("g2_winner", r["g1_winner"])
            a, b = r["model_1"], r["model_2"]
            if "error" in (g1, g2):
                invalid[f"{a} vs {b}"] += 1
                pair[a]["unparsable"] += 1
                pair[b]["unparsable"] += 1
                continue
            winner = g1 if g1 == g2 else "tie"  # inconsistent across the two orders: a tie
            if winner == "model_1":
                pair[a]["win"] += 1
                pair[b]["loss"] += 1
            elif winner == "model_2":
                pair[b]["win"] += 1
                pair[a]["loss"] += 1
            else:
                pair[a]["tie"] += 1
                pair[b]["tie"] += 1
        else:
            raise RealChatError("neither a single-answer nor a pairwise FastChat judgment", file=path,
                                record=f"line {i}", hint="expected model+score, or model_1/model_2/g1_winner")
    scores = {}
    for model, turns in single.items():
        allv = [s for v in turns.values() for s in v]
        scores[model] = {"turn_1": _mean(turns.get(1, [])), "turn_2": _mean(turns.get(2, [])),
                         "overall": _mean(allv), "n": len(allv), "invalid": invalid.get(model, 0),
                         "overall_ci95": _mean_ci(allv)}
    wins = {}
    for model, c in pair.items():
        n = c["win"] + c["tie"] + c["loss"]
        wins[model] = {**c, "win_rate": round(c["win"] / n, 4) if n else None,
                       "win_rate_adjusted": round((c["win"] + 0.5 * c["tie"]) / n, 4) if n else None}
    out = {"single": dict(sorted(scores.items(), key=lambda kv: -(kv[1]["overall"] or 0))),
           "pairwise": dict(sorted(wins.items(), key=lambda kv: -(kv[1]["win_rate_adjusted"] or 0))),
           "invalid": dict(invalid), "judges": judge_quality(rows)}
    out["ranking"] = ranking(out)
    return out


def _judge_name(r: dict[str, Any]) -> str:
    j = r.get("judge")
    return str(j[0]) if isinstance(j, list) and j else str(j or "judge")


def judge_quality(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per judge: questions seen, verdicts, the share it left unparsable, and its position bias from
    the both-orders pairs (both parsed): how often it prefers whichever answer comes first in both
    orders (``position_bias``), whichever comes second, and how often the two orders disagree at all."""
    acc: dict[str, dict[str, Any]] = defaultdict(lambda: {"questions": set(), "verdicts": 0, "unparsable": 0,
                                                         "pairs": 0, "first": 0, "second": 0, "inconsistent": 0})
    for r in rows:
        j = acc[_judge_name(r)]
        j["questions"].add(r.get("question_id"))
        if "score" in r:
            j["verdicts"] += 1
            j["unparsable"] += float(r["score"]) < 0
        elif "g1_winner" in r:
            g1, g2 = r["g1_winner"], r.get("g2_winner", r["g1_winner"])
            j["verdicts"] += 2
            j["unparsable"] += (g1 == "error") + (g2 == "error")
            if "error" not in (g1, g2):
                j["pairs"] += 1
                j["first"] += g1 == "model_1" and g2 == "model_2"   # answer A both times
                j["second"] += g1 == "model_2" and g2 == "model_1"  # answer B both times
                j["inconsistent"] += g1 != g2
    out = {}
    for name, j in acc.items():
        pairs = j["pairs"]
        out[name] = {"questions": len(j["questions"]), "verdicts": j["verdicts"], "unparsable": j["unparsable"],
                     "unparsable_share": round(j["unparsable"] / j["verdicts"], 4) if j["verdicts"] else None,
                     "pairs_both_parsed": pairs,
                     "position_bias": round(j["first"] / pairs, 4) if pairs else None,
                     "second_position_bias": round(j["second"] / pairs, 4) if pairs else None,
                     "inconsistent": round(j["inconsistent"] / pairs, 4) if pairs else None}
    return out


#: Above these a judge's figures do not rank models (the report says so).
MAX_UNPARSABLE_SHARE = 0.2
MAX_POSITION_BIAS = 0.3


def ranking(summary: dict[str, Any]) -> dict[str, Any]:
    """Whether these judgments can rank the models, and if not, why (plain sentences for the report).

    Not when: a judge leaves more than 20 % of its verdicts unparsable; a judge picks the same position
    in both orders in more than 30 % of the pairs; no two models' single-grading 95 % intervals are
    apart; no model's decisive pairwise record (wins vs losses) is apart from a coin toss (Wilson)."""
    from realchat.evaluation.intervals import wilson_interval

    reasons = []
    for name, j in (summary.get("judges") or {}).items():
        if j["unparsable_share"] is not None and j["unparsable_share"] > MAX_UNPARSABLE_SHARE:
            reasons.append(f"judge {name} left {j['unparsable_share']:.0%} of its verdicts unparsable")
        bias = max(j["position_bias"] or 0, j["second_position_bias"] or 0)
        if j["pairs_both_parsed"] and bias > MAX_POSITION_BIAS:
            reasons.append(f"judge {name} prefers the same position in both orders in {bias:.0%} of the pairs "
                           "(position bias): its pairwise verdicts follow the order, not the answers")
    single = {m: v for m, v in (summary.get("single") or {}).items() if v.get("overall_ci95")}
    if len(single) >= 2:
        cis = [v["overall_ci95"] for v in single.values()]
        apart = any(a[1] < b[0] or b[1] < a[0] for k, a in enumerate(cis) for b in cis[k + 1:])
        if not apart:
            reasons.append("the single-grading scores' 95 % intervals all overlap: the score differences are noise")
    pw = summary.get("pairwise") or {}
    if pw:
        decisive = []
        for v in pw.values():
            n = v["win"] + v["loss"]
            if n:
                lo, hi = wilson_interval(v["win"], n)
                decisive.append(lo > 0.5 or hi < 0.5)
        if not any(decisive):
            reasons.append("no pairwise record is apart from a coin toss (wins vs losses, 95 % Wilson interval; "
                           "ties and unparsable pairs aside)")
    return {"can_rank": not reasons, "reasons": reasons}


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def _mean_ci(xs: list[float]) -> list[float] | None:
    """Normal-approximation 95 % interval of a mean (None below two values)."""
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
    half = 1.96 * sd / len(xs) ** 0.5
    return [round(m - half, 4), round(m + half, 4)]
