"""How a user simulator behaves, measured as UserLM (arXiv 2510.06552) measures it.

* :func:`score_user_turns`: one teacher-forced pass of the simulator over real held-out conversations
  gives both its perplexity on the real user turns and its **ending** decisions: after each real
  assistant turn, would it write its end-of-conversation marker? The marker is plain text (the sft
  step's ``end_marker``), so "writes the marker" is decided on its first token: predicted end where
  that token is the simulator's most likely next token (greedy) at the start of the user turn. Gold: the
  conversation really ended after its last assistant turn (only conversations ``split`` did not cut);
  positions past the scoring window (``max_length``) are not scored.
  :func:`ending_scores` pools the decisions over turns (UserLM's termination F1) with a bootstrap
  interval over conversations, and counts the conversations ended exactly right (not before, not
  missed).
* :func:`role_classifier` / :func:`answer_share`: **role adherence**, the share of simulated user
  turns that read like an assistant's answer rather than a user's turn. The classifier is a logistic
  regression on MiniLM embeddings plus a few surface cues, trained on the *real* held-out
  conversations' user turns vs their assistant turns (labels come free with the data); its
  cross-validated accuracy on those real turns
  is reported beside it as the check of how far it can be trusted, and its false "answer" rate on
  real user turns is the floor a perfect simulator would show.
* :func:`intent_decomposition`: where conversations carry an ``intent`` (a one-sentence goal), the
  mean over user turns of |I ∩ U| / |U| on stop-word-filtered word sets (lower = the goal is revealed
  gradually, as real users do), with a bootstrap interval over conversations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from realchat.evaluation.intervals import bootstrap_interval, wilson_interval
from realchat.training.chat_format import as_user_simulator, loss_spans

Messages = list[dict[str, str]]


# -- one teacher-forced pass: perplexity and ending ------------------------------------------------


def _token_at(offsets: list[tuple[int, int]], char: int) -> int | None:
    """Index of the first token that starts at or covers character ``char``."""
    for t, (start, end) in enumerate(offsets):
        if start <= char < end or start >= char:
            return t
    return None


def score_user_turns(model: Any, tokenizer: Any, conversations: Sequence[Messages], system_prompt: str | None,
                     end_marker: str | None, max_length: int, nll_for: Sequence[bool],
                     ending_for: Sequence[bool]) -> tuple[list[tuple[float, int]], list[dict[str, Any]]]:
    """(``[(nll, tokens)]`` for the conversations marked in ``nll_for``, ending rows for those marked
    in ``ending_for``), from one forward pass per conversation.

    The conversation is laid out as the simulator is trained (its system prompt, the real turns, and,
    when it has a marker, the marker as a last user turn); the NLL covers the real user turns only (not
    the marker), cut at ``max_length`` exactly as :func:`~realchat.evaluation.fidelity.user_turn_nll`,
    whose figures it reproduces. An ending row is ``{"predicted": [bool per position after an
    assistant turn inside the window], "p_end": [...], "end_in_window": bool}``: positions past
    ``max_length`` are not scored, and the last position is the real end only when ``end_in_window``
    (a long conversation still counts its early positions, where ending would be a false positive).
    """
    import torch

    device = next(model.parameters()).device
    nll_rows: list[tuple[float, int]] = []
    endings: list[dict[str, Any]] = []
    for msgs, want_nll, want_end in zip(conversations, nll_for, ending_for):
        body = [m for m in msgs if m["role"] != "system"]
        # a conversation whose last question went unanswered did not end after an assistant turn
        want_end = bool(want_end and end_marker and body and body[-1]["role"] == "assistant")
        if not (want_nll or want_end):
            continue
        layout = as_user_simulator(msgs, system_prompt, end_marker if want_end else None)
        text, spans = loss_spans(tokenizer, layout, "user")
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        # user-turn starts after an assistant turn (the marker's is the last one when want_end)
        roles = [m["role"] for m in layout if m["role"] != "system"]
        user_idx = [i for i, r in enumerate(roles) if r == "user"]
        starts = [_token_at(offsets, s) for (s, _e), i in zip(spans, user_idx) if i > 0 and roles[i - 1] == "assistant"]
        x = torch.tensor([ids[:max_length]], device=device)
        with torch.inference_mode():
            logits = model(input_ids=x).logits[0].float()
        if want_nll:
            # loss tokens: the real user turns (the marker turn, last span when want_end, excluded)
            real_spans = spans[:-1] if want_end else spans
            mask = [any(a <= s < b for a, b in real_spans) for s, _e in offsets[:max_length]]
            target = torch.tensor(mask[1:], dtype=torch.bool)
            if target.any():
                nll = torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none").cpu()
                nll_rows.append((float(nll[target].sum()), int(target.sum())))
        inside = [t for t in starts if t is not None and 0 < t <= x.shape[1]]  # logits[t - 1] exist
        if want_end and inside and starts[-1] is not None:
            marker_id = ids[starts[-1]]
            probs = torch.softmax(logits, dim=-1)
            endings.append({"predicted": [int(logits[t - 1].argmax()) == marker_id for t in inside],
                            "p_end": [round(float(probs[t - 1, marker_id]), 4) for t in inside],
                            "end_in_window": inside[-1] == starts[-1]})
    return nll_rows, endings


def ending_scores(rows: Sequence[dict[str, Any]], bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Pooled per-turn precision, recall and F1 of "the simulator ends here" (gold: the real end, the
    last position of a row whose end is in the window), each with a 95 % bootstrap interval over
    conversations; and the share of conversations (end in the window) ended exactly right, at the
    real end and not before, with a Wilson interval."""
    if not rows:
        return {"conversations": 0, "positions": 0, "precision": None, "recall": None, "f1": None}

    def split(r: dict[str, Any]) -> tuple[list[bool], bool | None]:
        """(decisions before the real end, decision at the real end or None when it is out of the window)"""
        if r.get("end_in_window", True):
            return r["predicted"][:-1], r["predicted"][-1]
        return r["predicted"], None

    def counts(sample: Sequence[dict[str, Any]]) -> tuple[int, int, int]:
        tp = fp = fn = 0
        for r in sample:
            before, at_end = split(r)
            fp += sum(before)
            tp += at_end is True
            fn += at_end is False
        return tp, fp, fn

    def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    tp, fp, fn = counts(rows)
    p, r, f = prf(tp, fp, fn)
    lo, hi = bootstrap_interval(lambda i: np.array(prf(*counts([rows[k] for k in i]))), len(rows),
                                resamples=bootstrap, seed=seed)
    parts = [split(x) for x in rows]
    ended = [(before, at_end) for before, at_end in parts if at_end is not None]
    exact = sum(1 for before, at_end in ended if at_end and not any(before))
    gold = [x["p_end"][-1] for x in rows if x.get("end_in_window", True)]
    other = [q for x in rows for q in (x["p_end"][:-1] if x.get("end_in_window", True) else x["p_end"])]
    return {"conversations": len(rows), "ends_in_window": len(ended),
            "positions": sum(len(x["predicted"]) for x in rows),
            "true_positive": tp, "false_positive": fp, "false_negative": fn,
            "precision": round(p, 4), "precision_ci95": [round(lo[0], 4), round(hi[0], 4)],
            "recall": round(r, 4), "recall_ci95": [round(lo[1], 4), round(hi[1], 4)],
            "f1": round(f, 4), "f1_ci95": [round(lo[2], 4), round(hi[2], 4)],
            "exact": round(exact / len(ended), 4) if ended else None,
            "exact_ci95": wilson_interval(exact, len(ended)) if ended else None,
            "ended_early": round(sum(1 for before, _ in parts if any(before)) / len(rows), 4),
            "mean_p_end_at_end": round(float(np.mean(gold)), 4) if gold else None,
            "mean_p_end_before": round(float(np.mean(other)), 4) if other else None}


# -- role adherence -------------------------------------------------------------------------------


_USER_OPENING = re.compile(r"(?i)(i|i'm|my|can you|could you|please|write|what|how|why)\b")
_ANSWER_OPENING = re.compile(r"(?i)(sure|certainly|yes|no|here|as an ai|i'm sorry|of course|great)\b")
_LIST_LINE = re.compile(r"\s*([-*•]|\d+[.)])\s")


def surface_features(texts: Sequence[str]) -> np.ndarray:
    """Cheap cues MiniLM's meaning-centred embedding misses: length, question marks, line count,
    typical openings of requests and of answers, the share of list lines. With them the user-vs-
    assistant accuracy on real ShareGPT turns went from 0.73 to 0.84 (5-fold CV, 300 turns each)."""
    rows = []
    for t in texts:
        s = t.strip()
        lines = [line for line in s.splitlines() if line.strip()]
        rows.append([np.log1p(len(s)) / 8, float(s.endswith("?")), float("?" in s), np.log1p(len(lines)) / 4,
                     float(bool(_USER_OPENING.match(s))), float(bool(_ANSWER_OPENING.match(s))),
                     sum(bool(_LIST_LINE.match(line)) for line in lines) / max(len(lines), 1)])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 7)


def role_features(embeddings: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    return np.hstack([np.asarray(embeddings, dtype=np.float64), surface_features(texts)])


def role_classifier(user_emb: np.ndarray, user_texts: Sequence[str], assistant_emb: np.ndarray,
                    assistant_texts: Sequence[str], folds: int = 5, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(fitted user-vs-assistant classifier or None, its check): a logistic regression on embeddings
    plus :func:`surface_features` of real user turns (0) vs real assistant turns (1), balanced by
    sampling; the check is its cross-validated accuracy (Wilson interval) and its false "answer" rate
    on real user turns."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    n = min(len(user_emb), len(assistant_emb))
    if n < folds:
        return None, {"accuracy": None, "n_per_class": n}
    rng = np.random.default_rng(seed)
    ui = rng.choice(len(user_emb), n, replace=False)
    ai = rng.choice(len(assistant_emb), n, replace=False)
    x = np.vstack([role_features(user_emb[ui], [user_texts[i] for i in ui]),
                   role_features(assistant_emb[ai], [assistant_texts[i] for i in ai])])
    y = np.array([0] * n + [1] * n)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(LogisticRegression(max_iter=3000), x, y, cv=cv)
    correct = int((pred == y).sum())
    real_answers = int(pred[:n].sum())
    clf = LogisticRegression(max_iter=3000).fit(x, y)
    return clf, {"method": "logistic regression on MiniLM embeddings + 7 surface features, real user vs "
                           "real assistant turns", "accuracy": round(correct / len(y), 4),
                 "ci95": wilson_interval(correct, len(y)), "n_per_class": n, "folds": folds,
                 "real_user_turns_answering": round(real_answers / n, 4),
                 "real_user_turns_answering_ci95": wilson_interval(real_answers, n)}


def answer_share(clf: Any, user_emb: np.ndarray, user_texts: Sequence[str]) -> dict[str, Any]:
    """Share of user turns the classifier takes for an assistant's answer, and role adherence (1 − it)."""
    if clf is None or len(user_emb) == 0:
        return {"answering": None, "role_adherence": None, "turns": len(user_emb)}
    k = int(clf.predict(role_features(user_emb, user_texts)).sum())
    lo, hi = wilson_interval(k, len(user_emb))
    return {"answering": round(k / len(user_emb), 4), "answering_ci95": [lo, hi],
            "role_adherence": round(1 - k / len(user_emb), 4),
            "role_adherence_ci95": [round(1 - hi, 4), round(1 - lo, 4)], "turns": len(user_emb)}


# -- intent decomposition -------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def content_words(text: str) -> set[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return {w for w in _WORD.findall(text.lower()) if w not in ENGLISH_STOP_WORDS}


def intent_decomposition(conversations: Sequence[tuple[str, Messages]], bootstrap: int = 200,
                         seed: int = 0) -> dict[str, Any]:
    """Mean over user turns of |I ∩ U| / |U| (stop-word-filtered word sets of intent I and turn U;
    turns with no content word skipped), with a bootstrap interval over conversations."""
    per_conv: list[list[float]] = []
    for intent, msgs in conversations:
        words = content_words(intent)
        shares = []
        for m in msgs:
            if m["role"] == "user":
                u = content_words(m["content"])
                if u:
                    shares.append(len(words & u) / len(u))
        if shares:
            per_conv.append(shares)
    if not per_conv:
        return {"value": None, "ci95": None, "conversations": 0, "turns": 0}
    sums = np.array([sum(s) for s in per_conv])
    lens = np.array([len(s) for s in per_conv])
    lo, hi = bootstrap_interval(lambda i: sums[i].sum() / lens[i].sum(), len(sums), resamples=bootstrap, seed=seed)
    return {"value": round(float(sums.sum() / lens.sum()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "conversations": len(per_conv), "turns": int(lens.sum())}
