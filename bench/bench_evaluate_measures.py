"""Benchmark: what issue 14's measures add to the default recipe's evaluate step on a CPU.

On 150 real ShareGPT conversations (the default recipe's statistics sample size) and SmolLM2-135M
(the default simulator's base), times: the paper's MTLD and UserLM's first-turn diversity (per
dataset), the role classifier (embedding 150 real assistant turns, fitting, cross-validating), and
the ending measure: the perplexity pass on 16 conversations alone (today's cost) against the same
pass with the ending decisions on up to 16 whole conversations (those of the perplexity pass first),
both within 512 tokens. Prints figures;
not a test.

    python bench/bench_evaluate_measures.py [--conversations 150] [--ending 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=150)
    ap.add_argument("--perplexity", type=int, default=16)
    ap.add_argument("--ending", type=int, default=16)
    ap.add_argument("--role-turns", type=int, default=150)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()

    from realchat.curation.conversations import normalize
    from realchat.curation.sources import DEFAULT_ROLES, SourceConfig, open_source
    from realchat.evaluation import behaviour as bh
    from realchat.evaluation import fidelity as fm
    from realchat.evaluation.embeddings import encode, load_encoder
    from realchat.evaluation.statistics import first_turn_diversity, mtld_per_text, user_turns
    from realchat.models import materialize_model
    from realchat.models.backends import LocalModel
    from realchat.recipe.base import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL, DEFAULT_USER_SYSTEM_PROMPT
    from realchat.steps.evaluate import hash_order, is_whole

    records, _ = open_source(SourceConfig(limit=3000), Path("."))
    convs = []
    for rec in records:
        row, _ = normalize(rec, dict(DEFAULT_ROLES), "id", "sharegpt")
        if row and any(m["role"] == "user" for m in row["messages"]):
            convs.append({"id": row["conversation_id"], "base_id": row["conversation_id"],
                          "messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]})
    convs = hash_order(convs)[: args.conversations]
    msgs = [c["messages"] for c in convs]
    figures = {}

    t0 = time.perf_counter()
    paper = mtld_per_text(user_turns(msgs))
    ftd = first_turn_diversity(user_turns(msgs, first_only=True))
    figures["statistics: mtld_paper + first-turn diversity (s)"] = round(time.perf_counter() - t0, 2)
    figures["mtld_paper / first-turn diversity"] = f"{paper['mean']:.1f} / {ftd['value']} {ftd['ci95']}"

    encoder = load_encoder(DEFAULT_EMBEDDING_MODEL)
    users = user_turns(msgs)
    user_emb = encode(encoder, users)
    t0 = time.perf_counter()
    answers = [m["content"] for m in (m for c in msgs for m in c) if m["role"] == "assistant"][: args.role_turns]
    clf, check = bh.role_classifier(user_emb, users, encode(encoder, answers), answers)
    figures["role classifier: embed + fit + 5-fold CV (s)"] = round(time.perf_counter() - t0, 2)
    figures["role classifier CV accuracy"] = f"{check['accuracy']} {check['ci95']}"

    prompt, marker = DEFAULT_USER_SYSTEM_PROMPT, "<|endconversation|>"
    real = convs[: args.perplexity]
    ending = ([c for c in real if is_whole(c)] + [c for c in convs[len(real):] if is_whole(c)])[: args.ending]
    local = LocalModel(materialize_model(DEFAULT_MODEL))
    t0 = time.perf_counter()
    fm.user_turn_nll(local.model, local.tokenizer, [c["messages"] for c in real], prompt, args.max_length)
    alone = time.perf_counter() - t0
    in_ppl = {id(c) for c in real}
    union = real + [c for c in ending if id(c) not in in_ppl]
    t0 = time.perf_counter()
    _, rows = bh.score_user_turns(local.model, local.tokenizer, [c["messages"] for c in union], prompt, marker,
                                  args.max_length, [id(c) in in_ppl for c in union],
                                  [id(c) in {id(e) for e in ending} for c in union])
    both = time.perf_counter() - t0
    figures["perplexity pass alone (s)"] = round(alone, 2)
    figures["perplexity + ending pass (s)"] = round(both, 2)
    figures["ending conversations / positions / real ends in window / extra forwards"] = (
        f"{len(rows)} / {sum(len(r['predicted']) for r in rows)} / {sum(r['end_in_window'] for r in rows)}"
        f" / {len(union) - len(real)}")
    for k, v in figures.items():
        print(f"{k:55s} {v}")


if __name__ == "__main__":
    main()
