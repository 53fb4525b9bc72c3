"""Simulator fidelity: how much a user simulator's turns look like real users' (after UserLM,
arXiv 2510.06552, which goes beyond the paper's own human-likeness detector).

* :func:`user_turn_perplexity`: perplexity of a model on the **real** user turns of held-out
  conversations, each turn given the real conversation so far, with the simulator's system prompt in
  front. For the trained simulator this is its held-out fit; for the base instruct model with the same
  prompt it is the "assistant prompted to play the user" baseline. Lower is more human-like.
* :func:`frechet_distance`: distance between the embedding distributions of simulated and real user
  turns (FID-style), after a PCA fitted on both sets, since a few hundred turns cannot estimate a
  384×384 covariance; with a bootstrap interval and, as a noise floor, the distance between two halves
  of the real turns.
* :func:`classifier_accuracy`: cross-validated accuracy of a logistic-regression classifier telling
  real from simulated turns by their embeddings, with a Wilson interval (0.5 = indistinguishable).
* :func:`end_shares` and :func:`rounds_comparison`: how conversations end and how long they run,
  simulated against real.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from realchat.evaluation.intervals import bootstrap_interval, wilson_interval
from realchat.recipe.base import DEFAULT_MODEL, Strict
from realchat.recipe.refs import ChatTemplateRef, ModelRef
from realchat.training.chat_format import as_user_simulator, tokenize_with_mask

Messages = list[dict[str, str]]


class FidelityConfig(Strict):
    """How human-like the simulators are (UserLM, arXiv 2510.06552), on real conversations none saw."""

    #: The trained simulator, and the base model prompted (same system prompt) to act as the user.
    simulator_model: ModelRef
    #: The base model prompted as the user, for the perplexity baseline; null = no baseline.
    baseline_model: ModelRef | None = DEFAULT_MODEL
    #: ``baseline_model``'s chat format (a built-in name or a Jinja file); null = its tokenizer's own
    #: (required when it has none).
    baseline_chat_template: ChatTemplateRef | None = None
    #: The ``name`` of the held-out real conversations among the evaluate step's ``datasets``.
    real: str = "sharegpt"
    #: The names of the simulated datasets compared with them (each gets its own row).
    simulated: list[str] = Field(default_factory=lambda: ["realchat"], min_length=1)
    #: Real conversations scored for perplexity (the simulator's context is the real conversation so far).
    perplexity_conversations: int = Field(32, ge=1)
    #: Tokens of context when scoring perplexity (longer conversations are cut from the front).
    max_length: int = Field(1024, ge=16)
    #: Ending measure: this many held-out real conversations that ``split`` did not cut (whole, ending
    #: on an assistant turn), those of the perplexity pass first, scored teacher-forced in that same
    #: pass within ``max_length``; 0 = off.
    ending_conversations: int = Field(16, ge=0)
    #: Role adherence: real assistant turns embedded to train the user-vs-assistant classifier
    #: (against as many real user turns); 0 = off.
    role_turns: int = Field(200, ge=0)
    #: Embedding-space comparison: Fréchet distance after PCA to this many dimensions (few samples
    #: cannot estimate a full covariance), and a logistic-regression human-vs-simulated classifier.
    frechet_dims: int = Field(16, ge=1)
    #: User turns per dataset embedded for the Fréchet distance and the classifier.
    max_turns: int = Field(400, ge=10)
    #: Bootstrap resamples for the 95 % intervals.
    bootstrap: int = Field(200, ge=10)
    #: Cross-validation folds of the real-vs-simulated classifier.
    cv_folds: int = Field(5, ge=2)

    @field_validator("simulated", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


# -- perplexity on real user turns ---------------------------------------------------------------


def user_turn_nll(model: Any, tokenizer: Any, conversations: Sequence[Messages], system_prompt: str | None,
                  max_length: int) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, tokens) of the user turns of each conversation.

    The conversation is laid out as UserGPT is trained (``as_user_simulator``: the simulator's system
    prompt, the real turns, no end marker) and cut at ``max_length`` tokens; conversations whose user
    tokens all fall beyond the cut contribute nothing.
    """
    import torch

    out: list[tuple[float, int]] = []
    device = next(model.parameters()).device
    for msgs in conversations:
        row = tokenize_with_mask(tokenizer, as_user_simulator(msgs, system_prompt, None), "user")
        ids, mask = row["input_ids"][:max_length], row["assistant_masks"][:max_length]
        target_mask = torch.tensor(mask[1:], dtype=torch.bool)
        if not target_mask.any():
            continue
        x = torch.tensor([ids], device=device)
        with torch.inference_mode():
            logits = model(input_ids=x).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="none").cpu()
        out.append((float(nll[target_mask].sum()), int(target_mask.sum())))
    return out


def perplexity_with_ci(per_conversation: Sequence[tuple[float, int]], bootstrap: int = 200,
                       seed: int = 0) -> dict[str, Any]:
    """Token-weighted perplexity, with a 95 % bootstrap interval over conversations."""
    if not per_conversation:
        return {"perplexity": None, "ci95": None, "tokens": 0, "conversations": 0}
    nll = np.array([a for a, _ in per_conversation])
    n = np.array([b for _, b in per_conversation])
    point = math.exp(nll.sum() / n.sum())
    lo, hi = bootstrap_interval(lambda i: math.exp(nll[i].sum() / n[i].sum()), len(nll),
                                resamples=bootstrap, seed=seed)
    return {"perplexity": round(point, 3), "ci95": [round(float(lo), 3), round(float(hi), 3)],
            "tokens": int(n.sum()), "conversations": len(nll)}


def model_user_perplexity(model_path: str, conversations: Sequence[Messages], system_prompt: str | None,
                          max_length: int, bootstrap: int, seed: int, chat_template: str | None = None) -> dict[str, Any]:
    from realchat.models.backends import LocalModel

    local = LocalModel(model_path, chat_template=chat_template)  # the device, dtype and load errors of every local model
    return perplexity_with_ci(user_turn_nll(local.model, local.tokenizer, conversations, system_prompt, max_length),
                              bootstrap, seed)


# -- embedding-space distances --------------------------------------------------------------------


def _pca_basis(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = max(1, min(dims, x.shape[0] - 1, x.shape[1]))
    return mean, vt[:k].T


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)); the trace of the matrix square root is
    the sum of the square roots of the eigenvalues of C_a C_b (real and >= 0 for covariances)."""
    mu = a.mean(axis=0) - b.mean(axis=0)
    ca = np.atleast_2d(np.cov(a, rowvar=False))
    cb = np.atleast_2d(np.cov(b, rowvar=False))
    eig = np.clip(np.real(np.linalg.eigvals(ca @ cb)), 0, None)
    return float(max(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(eig).sum(), 0.0))


def frechet_distance(real: np.ndarray, simulated: np.ndarray, dims: int = 16, bootstrap: int = 200,
                     seed: int = 0) -> dict[str, Any]:
    """Fréchet distance between two embedding sets in a shared PCA space, with a 95 % bootstrap
    interval and the split-half distance of the real set as a floor (what sampling noise alone gives)."""
    if len(real) < 4 or len(simulated) < 4:
        return {"distance": None, "ci95": None, "real_split_half": None, "dims": 0,
                "n_real": len(real), "n_simulated": len(simulated)}
    mean, basis = _pca_basis(np.vstack([real, simulated]), dims)
    r, s = (real - mean) @ basis, (simulated - mean) @ basis
    distance = _frechet(r, s)
    # re-centred on the distance: a resample repeats turns, which by itself inflates a Fréchet distance
    lo, hi = bootstrap_interval(lambda i, j: _frechet(r[i], s[j]), len(r), len(s), resamples=bootstrap, seed=seed,
                                recentre_on=distance)
    perm = np.random.default_rng(seed).permutation(len(r))
    half = len(r) // 2
    return {"distance": round(distance, 4), "ci95": [round(max(float(lo), 0.0), 4), round(float(hi), 4)],
            "real_split_half": round(_frechet(r[perm[:half]], r[perm[half:]]), 4), "dims": basis.shape[1],
            "n_real": len(real), "n_simulated": len(simulated)}


def classifier_accuracy(real: np.ndarray, simulated: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Cross-validated accuracy of real-vs-simulated logistic regression on balanced classes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    n = min(len(real), len(simulated))
    if n < folds:
        return {"accuracy": None, "ci95": None, "n_per_class": n}
    rng = np.random.default_rng(seed)
    r = real[rng.choice(len(real), n, replace=False)]
    s = simulated[rng.choice(len(simulated), n, replace=False)]
    x = np.vstack([r, s])
    y = np.array([0] * n + [1] * n)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred = cross_val_predict(LogisticRegression(max_iter=2000), x, y, cv=cv)
    correct = int((pred == y).sum())
    return {"accuracy": round(correct / len(y), 4), "ci95": wilson_interval(correct, len(y)),
            "n_per_class": n, "folds": folds}


# -- how conversations end and how long they run ----------------------------------------------------

#: Stop reasons by who ended the conversation.
END_GROUPS = {"end_marker": "simulator", "max_rounds": "limit", "context_budget": "limit",
              "empty_question": "degenerate", "repeated_question": "degenerate", "copied_answer": "degenerate",
              "failed": "failed", "seed_too_long": "skipped"}


def end_shares(stop_reasons: dict[str, int]) -> dict[str, float]:
    total = sum(stop_reasons.values())
    groups: Counter[str] = Counter()
    for reason, n in stop_reasons.items():
        groups[END_GROUPS.get(reason, "other")] += n
    return {g: round(n / total, 4) for g, n in sorted(groups.items())} if total else {}


def rounds_of(conversations: Sequence[Messages]) -> list[int]:
    return [sum(1 for m in msgs if m["role"] == "user") for msgs in conversations]


def total_variation(real: Sequence[int], simulated: Sequence[int]) -> float:
    """½ Σ_k |P_real(k) − P_sim(k)| over the rounds values k of both samples."""
    hr, hs = Counter(real), Counter(simulated)
    nr, ns = max(len(real), 1), max(len(simulated), 1)
    return 0.5 * sum(abs(hr[k] / nr - hs[k] / ns) for k in set(hr) | set(hs))


def rounds_comparison(real: Sequence[int], simulated: Sequence[int], bootstrap: int = 200,
                      seed: int = 0) -> dict[str, Any]:
    """Rounds histograms, means and the total-variation distance between the two distributions, with a
    95 % bootstrap interval (both samples redrawn)."""
    hr, hs = Counter(real), Counter(simulated)
    keys = sorted(set(hr) | set(hs))
    ci = None
    if real and simulated:
        r, s = np.asarray(real), np.asarray(simulated)
        lo, hi = bootstrap_interval(lambda i, j: total_variation(r[i].tolist(), s[j].tolist()), len(r), len(s),
                                    resamples=bootstrap, seed=seed)
        ci = [round(float(lo), 4), round(float(hi), 4)]
    return {"real_mean": round(float(np.mean(real)), 2) if real else None,
            "simulated_mean": round(float(np.mean(simulated)), 2) if simulated else None,
            "total_variation": round(total_variation(real, simulated), 4), "total_variation_ci95": ci,
            "real_histogram": {str(k): hr[k] for k in keys}, "simulated_histogram": {str(k): hs[k] for k in keys}}
