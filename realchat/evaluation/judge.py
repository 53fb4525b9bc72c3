"""LLM-judge verdicts and FastChat judgment files (MT-Bench / Vicuna-Bench).

Parsing follows FastChat's rules so figures compare with published ones: single-answer grading reads
``[[8]]`` (or ``[8]`` as a fallback) and records -1 when neither is there; pairwise reads ``[[A]]``,
``[[B]]`` or ``[[C]]`` (tie) and records ``error`` otherwise. ``summarize`` reads any FastChat-format
judgment file, ours or published ones: mean score per model and turn over valid scores, and pairwise
win/tie/loss where a verdict counts only when both orders agree (FastChat's position-bias rule).
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


def parse_score(judgment: str) -> float:
    m = _SCORE.search(judgment) or _SCORE_FALLBACK.search(judgment)
    if not m:
        return -1.0
    try:
        return float(m.group(1))
    except ValueError:
        return -1.0


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
            if isinstance(score, bool) or not isinstance(score, (int, float)) or score != score:
                raise bad("score", "a number (-1 for an unparsable verdict)")
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
    single: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    invalid: dict[str, int] = defaultdict(int)
    pair: dict[str, dict[str, int]] = defaultdict(lambda: {"win": 0, "tie": 0, "loss": 0})
    for i, r in enumerate(rows, 1):
        if "score" in r and "model" in r:
            if float(r["score"]) < 0:
                invalid[r["model"]] += 1
            else:
                single[r["model"]][int(r.get("turn", 1))].append(float(r["score"]))
        elif "model_1" in r and "g1_winner" in r:
            g1, g2 = r["g1_winner"], r.get("g2_winner", r["g1_winner"])
            winner = g1 if g1 == g2 else "tie"  # inconsistent across the two orders: a tie
            if winner == "error":
                invalid[f"{r['model_1']} vs {r['model_2']}"] += 1
                continue
            a, b = r["model_1"], r["model_2"]
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
                         "overall": _mean(allv), "n": len(allv), "invalid": invalid.get(model, 0)}
    wins = {}
    for model, c in pair.items():
        n = c["win"] + c["tie"] + c["loss"]
        wins[model] = {**c, "win_rate": round(c["win"] / n, 4) if n else None,
                       "win_rate_adjusted": round((c["win"] + 0.5 * c["tie"]) / n, 4) if n else None}
    return {"single": dict(sorted(scores.items(), key=lambda kv: -(kv[1]["overall"] or 0))),
            "pairwise": dict(sorted(wins.items(), key=lambda kv: -(kv[1]["win_rate_adjusted"] or 0))),
            "invalid": dict(invalid)}


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None
