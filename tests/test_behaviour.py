"""Simulator behaviour measures (UserLM's): ending, role adherence, intent decomposition, rounds TVD."""

from __future__ import annotations

import pytest

from realchat.evaluation import behaviour as bh
from realchat.evaluation import fidelity as fm

MARKER = "<|endconversation|>"
CONVS = [
    [{"role": "user", "content": "Hello, how are you today?"},
     {"role": "assistant", "content": "I am fine, thank you."},
     {"role": "user", "content": "Write a Python function that sorts a list."},
     {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Sort a list."},
     {"role": "assistant", "content": "Use sorted."}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"},
     {"role": "user", "content": "unanswered"}],  # its end is unknown: no ending row
]


def test_ending_scores_by_hand():
    rows = [{"predicted": [False, False, True], "p_end": [0.1, 0.2, 0.9]},   # ended exactly right
            {"predicted": [True, False], "p_end": [0.6, 0.3]},               # too early, then missed
            {"predicted": [False, True], "p_end": [0.2, 0.7]}]               # exactly right
    s = bh.ending_scores(rows, bootstrap=50)
    # TP 2 (rows 1, 3), FP 1 (row 2's first position), FN 1 (row 2's end): P = R = F1 = 2/3
    assert (s["true_positive"], s["false_positive"], s["false_negative"]) == (2, 1, 1)
    assert s["precision"] == s["recall"] == s["f1"] == round(2 / 3, 4)
    assert s["exact"] == round(2 / 3, 4) and s["ended_early"] == round(1 / 3, 4)
    assert s["positions"] == 7 and s["mean_p_end_at_end"] == pytest.approx((0.9 + 0.3 + 0.7) / 3, abs=1e-4)
    assert s["f1_ci95"][0] <= s["f1"] <= s["f1_ci95"][1]
    # a long conversation whose end is past the window: its positions can only be false positives
    cut = bh.ending_scores(rows + [{"predicted": [True, False], "p_end": [0.8, 0.1], "end_in_window": False}],
                           bootstrap=20)
    assert (cut["true_positive"], cut["false_positive"], cut["false_negative"]) == (2, 2, 1)
    assert cut["precision"] == 0.5 and cut["recall"] == round(2 / 3, 4) and cut["ends_in_window"] == 3
    assert cut["exact"] == round(2 / 3, 4) and cut["ended_early"] == 0.5
    never = bh.ending_scores([{"predicted": [False, False], "p_end": [0.0, 0.0]}], bootstrap=10)
    assert never["precision"] == never["recall"] == never["f1"] == 0.0 and never["false_negative"] == 1
    assert bh.ending_scores([])["f1"] is None


def test_one_pass_gives_the_perplexity_and_the_ending_decisions_of_separate_passes(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from realchat.training.chat_format import as_user_simulator, tokenize_with_mask

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    nll, ends = bh.score_user_turns(model, tok, CONVS, "Ask.", MARKER, 512, [True] * 3, [True] * 3)
    # the perplexity part is exactly fidelity.user_turn_nll's (the marker turn adds no loss tokens)
    separate = fm.user_turn_nll(model, tok, CONVS, "Ask.", 512)
    assert [n for _, n in nll] == [n for _, n in separate]
    assert [x for x, _ in nll] == pytest.approx([x for x, _ in separate], rel=1e-5)
    assert [len(e["predicted"]) for e in ends] == [2, 1]  # one position per assistant turn; conv 3 has none
    # brute force: the conversation up to each assistant turn, then the marker as a user turn; is the
    # marker's first token the argmax right after the user header, and with what probability?
    for conv, row in zip(CONVS[:2], ends):
        body = [m for m in conv if m["role"] != "system"]
        cuts = [i + 1 for i, m in enumerate(body) if m["role"] == "assistant"]
        for cut, predicted, p_end in zip(cuts, row["predicted"], row["p_end"]):
            enc = tokenize_with_mask(tok, as_user_simulator(body[:cut], "Ask.", MARKER), "user")
            mask = enc["assistant_masks"]
            t = max(i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1]))  # the marker turn's start
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([enc["input_ids"][:t]])).logits[0, -1]
            assert predicted == (int(logits.argmax()) == enc["input_ids"][t])
            assert p_end == pytest.approx(float(torch.softmax(logits, -1)[enc["input_ids"][t]]), abs=2e-4)
    assert all(e["end_in_window"] for e in ends)
    # a window that holds the first position but not the end: one position, scored as before, no gold
    enc = tokenize_with_mask(tok, as_user_simulator(CONVS[0], "Ask.", MARKER), "user")
    mask = enc["assistant_masks"]
    turn_starts = [i for i in range(1, len(mask)) if mask[i] and not mask[i - 1]]  # user 1, user 2, marker
    window = turn_starts[1]  # the logits before user 2 are in, the marker is not
    nll_cut, ends_cut = bh.score_user_turns(model, tok, CONVS[:1], "Ask.", MARKER, window, [True], [True])
    assert nll_cut and ends_cut == [{"predicted": ends[0]["predicted"][:1], "p_end": ends[0]["p_end"][:1],
                                     "end_in_window": False}]


def test_ending_is_learned_where_the_marker_always_follows(tiny_model_dir):
    """A model whose output bias makes the marker's first token the argmax everywhere ends everywhere:
    recall 1, precision = conversations / positions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from realchat.training.chat_format import as_user_simulator, tokenize_with_mask

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    enc = tokenize_with_mask(tok, as_user_simulator(CONVS[1], None, MARKER), "user")
    mask = enc["assistant_masks"]
    marker_first = enc["input_ids"][max(i for i in range(len(mask)) if mask[i] and not mask[i - 1])]

    class Biased(torch.nn.Module):
        """The tiny model with +100 on the marker's first token's logit everywhere."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids):
            out = self.inner(input_ids=input_ids)
            out.logits[..., marker_first] += 100
            return out

    _, ends = bh.score_user_turns(Biased(), tok, CONVS, None, MARKER, 512, [False] * 3, [True] * 3)
    s = bh.ending_scores(ends, bootstrap=10)
    assert all(all(e["predicted"]) for e in ends)
    assert s["recall"] == 1.0 and s["precision"] == round(2 / 3, 4) and s["exact"] == 0.5


def test_rounds_total_variation_has_an_interval():
    r = fm.rounds_comparison([1, 1, 2, 4], [1, 2, 2, 2], bootstrap=100)
    assert r["total_variation"] == 0.5  # by hand: .5 * (|.5-.25| + |.25-.75| + |.25-0|)
    lo, hi = r["total_variation_ci95"]
    assert 0 <= lo <= hi <= 1
    assert fm.rounds_comparison([2, 3], [2, 3])["total_variation"] == 0.0


def test_intent_decomposition_by_hand():
    intent = "Plan a trip to Paris in spring"          # content words: plan, trip, paris, spring
    conv = [{"role": "user", "content": "I want to plan a trip."},      # {want, plan, trip}: 2/3
            {"role": "assistant", "content": "Where to?"},
            {"role": "user", "content": "What about museums?"},        # {museums}: 0
            {"role": "user", "content": "and the?"}]                    # no content word: skipped
    assert bh.content_words(conv[0]["content"]) == {"want", "plan", "trip"}
    r = bh.intent_decomposition([(intent, conv)], bootstrap=20)
    assert r["value"] == round(1 / 3, 4) and r["turns"] == 2 and r["conversations"] == 1
    assert bh.intent_decomposition([])["value"] is None


def test_role_classifier_tells_real_answers_from_real_questions(sharegpt_records):
    """Checked on real ShareGPT turns: trained on one half's user vs assistant turns, it calls the
    other half's assistant turns answers and its user turns not."""
    from realchat.evaluation.embeddings import encode, load_encoder
    from realchat.recipe.base import DEFAULT_EMBEDDING_MODEL

    enc = load_encoder(DEFAULT_EMBEDDING_MODEL)
    turns = {"human": [], "gpt": []}
    for r in sharegpt_records[:200]:
        for t in r["conversations"]:
            if t["from"] in turns and t["value"].strip():
                turns[t["from"]].append(t["value"])
    ut, at = turns["human"][:240], turns["gpt"][:240]
    users, answers = encode(enc, ut), encode(enc, at)
    clf, check = bh.role_classifier(users[:120], ut[:120], answers[:120], at[:120], folds=5)
    assert check["accuracy"] > 0.75 and check["ci95"][0] > 0.65
    held_answers = bh.answer_share(clf, answers[120:], at[120:])
    held_users = bh.answer_share(clf, users[120:], ut[120:])
    # on turns it never saw: most answers called answers, few questions; far better than a coin (0.5)
    assert held_answers["answering"] > 0.6 and held_users["answering"] < 0.3
    assert (held_answers["answering"] + 1 - held_users["answering"]) / 2 > 0.7
    assert held_users["role_adherence"] == round(1 - held_users["answering"], 4)
    assert held_users["role_adherence_ci95"][0] <= held_users["role_adherence"] <= held_users["role_adherence_ci95"][1]
