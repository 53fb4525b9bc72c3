"""Evaluation: fidelity metrics on hand-computed inputs, FastChat prompts on the real judge prompts and
questions, the judge client against a local OpenAI-compatible server, and the whole evaluate step
on tiny models (report, plots, metrics table, FastChat files, cards of the simulations and ReaLMs)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from realchat.evaluation import benchmarks as bm
from realchat.cli import app
from realchat.evaluation import fidelity as fm
from realchat.evaluation.benchmarks import BenchmarkConfig
from realchat.models.backends import Generation

runner = CliRunner()
EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


# -- fidelity metrics -----------------------------------------------------------------------------


def test_frechet_distance_of_shifted_sets_is_the_squared_shift():
    a = np.array([[0.0], [2.0], [0.0], [2.0]])
    b = a + 4.0  # same covariance, mean moved by 4 → distance 16
    r = fm.frechet_distance(a, b, dims=1, bootstrap=20)
    assert r["distance"] == pytest.approx(16.0, abs=1e-6)
    same = fm.frechet_distance(a, a.copy(), dims=1, bootstrap=20)
    assert same["distance"] == pytest.approx(0.0, abs=1e-6)


def test_frechet_uses_both_covariances():
    a = np.array([[-1.0], [1.0], [-1.0], [1.0]])  # variance 4/3 (ddof 1)
    b = 3 * a                                      # variance 12
    # (sqrt(var_a) - sqrt(var_b))^2 in 1-D
    expected = (np.sqrt(4 / 3) - np.sqrt(12)) ** 2
    assert fm.frechet_distance(a, b, dims=1, bootstrap=10)["distance"] == pytest.approx(expected, abs=1e-4)


def test_wilson_interval_matches_hand_value():
    lo, hi = fm.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)


def test_classifier_separates_distinct_sets_and_not_identical_ones():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (120, 8))
    far = rng.normal(3, 1, (120, 8))
    near = rng.normal(0, 1, (120, 8))
    assert fm.classifier_accuracy(real, far)["accuracy"] > 0.95
    r = fm.classifier_accuracy(real, near)
    assert r["ci95"][0] < 0.5 + 0.15 and r["accuracy"] < 0.7


def test_rounds_comparison_and_end_shares():
    r = fm.rounds_comparison([1, 1, 2, 4], [1, 2, 2, 2])
    # real: 1→.5, 2→.25, 4→.25; sim: 1→.25, 2→.75 → TV = .5*(.25+.5+.25) = .5
    assert r["total_variation"] == 0.5 and r["real_mean"] == 2.0 and r["simulated_mean"] == 1.75
    shares = fm.end_shares({"end_marker": 2, "max_rounds": 5, "context_budget": 1, "repeated_question": 2})
    assert shares == {"degenerate": 0.2, "limit": 0.6, "simulator": 0.2}


def test_user_turn_nll_equals_the_models_masked_loss(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from realchat.training.chat_format import as_user_simulator, tokenize_with_mask

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    conv = [{"role": "user", "content": "Hello, how are you today?"},
            {"role": "assistant", "content": "I am fine, thank you."},
            {"role": "user", "content": "Write a Python function that sorts a list."}]
    [(nll, n)] = fm.user_turn_nll(model, tok, [conv], "Ask.", 256)
    row = tokenize_with_mask(tok, as_user_simulator(conv, "Ask.", None), "user")
    labels = torch.tensor([[t if m else -100 for t, m in zip(row["input_ids"], row["assistant_masks"])]])
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).loss
    assert n == sum(row["assistant_masks"][1:]) > 10
    assert nll / n == pytest.approx(float(loss), rel=1e-4)
    ppl = fm.perplexity_with_ci([(nll, n)], bootstrap=10)
    assert ppl["perplexity"] == pytest.approx(np.exp(float(loss)), rel=1e-3)


# -- benchmarks: questions and FastChat prompts ---------------------------------------------------


def bench_cfg(**kw) -> BenchmarkConfig:
    return BenchmarkConfig(questions=str(EVAL), models=[{"name": "m", "backend": {"kind": "local", "model": "x"}}], **kw)


def test_questions_round_robin_over_categories_and_references():
    questions, refs = bm.load_questions(bench_cfg(), "mt_bench", Path("."))
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    picked = bm.select_questions(questions, 8)
    assert len({q["category"] for q in picked}) == 8  # MT-Bench has 8 categories, one each
    assert {q["category"] for q in questions if q["question_id"] in refs} >= {"math", "reasoning", "coding"}


def test_judge_prompts_pick_reference_and_multi_turn_variants():
    prompts = bm.load_judge_prompts(bench_cfg(), Path("."))
    questions, refs = bm.load_questions(bench_cfg(), "mt_bench", Path("."))
    math_q = next(q for q in questions if q["category"] == "math")
    writing_q = next(q for q in questions if q["category"] == "writing")
    answers = {"m": {math_q["question_id"]: ["x = {1}", "y"], writing_q["question_id"]: ["a", "b"]}}
    seen = []

    def chat(convs, sampling):
        seen.extend(convs)
        return [Generation("Rating: [[6]]") for _ in convs]

    rows = bm.judge_single(chat, "j", prompts, [math_q, writing_q], refs, answers, 16)
    assert [(r["judge"][1], r["turn"]) for r in rows] == [
        ("single-math-v1", 1), ("single-math-v1-multi-turn", 2), ("single-v1", 1), ("single-v1-multi-turn", 2)]
    assert all(r["score"] == 6.0 for r in rows)
    first = seen[0][-1]["content"]
    assert math_q["turns"][0] in first and refs[math_q["question_id"]][0] in first and "x = {1}" in first
    assert not re.search(r"\{(question|answer|ref_answer)\w*\}", "".join(m["content"] for c in seen for m in c))
    assert seen[0][0] == {"role": "system", "content": prompts["single-math-v1"]["system_prompt"]}


class JudgeServer(BaseHTTPRequestHandler):
    """OpenAI-compatible judge: grades [[7]], always prefers answer A (position bias), and answers
    garbage when the assistant's answer contains 'garbage'."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        if "garbage" in prompt:
            text = "I cannot decide."
        elif "Assistant B" in prompt:
            text = "A is better. [[A]]"
        else:
            text = "Good. Rating: [[7]]"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                              "usage": {"completion_tokens": 3}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), JudgeServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_judge_client_over_http_writes_fastchat_files_that_eval_show_reads(judge_url, tmp_path):
    from realchat.models.backends import OpenAIBackend, OpenAIChat

    judge = OpenAIChat(OpenAIBackend(base_url=judge_url, model="judge-1", max_retries=0))
    prompts = bm.load_judge_prompts(bench_cfg(), Path("."))
    questions, refs = bm.load_questions(bench_cfg(), "vicuna_bench", Path("."))
    qs = questions[:4]
    answers = {"good": {q["question_id"]: [f"fine answer {q['question_id']}"] for q in qs},
               "bad": {q["question_id"]: ["garbage" if i == 0 else f"meh {i}"] for i, q in enumerate(qs)}}
    single = bm.judge_single(judge.chat, "judge-1", prompts, qs, refs, answers, 32)
    pair = bm.judge_pairwise(judge.chat, "judge-1", prompts, qs, refs, answers, "bad", 32)
    assert sorted(r["score"] for r in single) == [-1] + [7.0] * 7  # the garbage answer's verdict is unparsable
    # the judge always says A: in both orders that is each model once → FastChat counts a tie
    assert all({r["g1_winner"], r["g2_winner"]} == {"model_1", "model_2"} for r in pair[1:])
    assert pair[0]["g1_winner"] == pair[0]["g2_winner"] == "error"
    path = tmp_path / "judge-1_single.jsonl"
    bm.write_jsonl(path, single)
    bm.write_jsonl(tmp_path / "judge-1_pair.jsonl", pair)
    r = runner.invoke(app, ["eval", "show", str(path), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["single"]["good"]["overall"] == 7.0 and data["single"]["bad"]["invalid"] == 1
    r = runner.invoke(app, ["eval", "show", str(tmp_path / "judge-1_pair.jsonl"), "--json"])
    data = json.loads(r.stdout)
    assert data["pairwise"]["good"] == {"win": 0, "tie": 3, "loss": 0, "unparsable": 1, "win_rate": 0.0,
                                        "win_rate_adjusted": 0.5}
    # the judge says A whatever the order: its position bias is 100 %, and it cannot rank the models
    assert data["judges"]["judge-1"]["position_bias"] == 1.0 and data["judges"]["judge-1"]["pairs_both_parsed"] == 3
    assert data["judges"]["judge-1"]["unparsable_share"] == round(2 / 8, 4)
    assert not data["ranking"]["can_rank"]
    r = runner.invoke(app, ["eval", "show", str(tmp_path / "judge-1_pair.jsonl")])
    assert r.exit_code == 0 and "cannot rank the models" in " ".join(r.output.split())


# -- the step -------------------------------------------------------------------------------------


@pytest.fixture
def eval_recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, tmp_path, judge_url):
    """The paper's comparison on tiny models: curate (half held out: split keeps only a fifth of the 120
    records, and the fidelity measures need a few real conversations) → usergpt (sft, loss on user)
    → two simulations of the same size (UserGPT, and the tiny model role-playing the user) → one ReaLM
    each (sft, loss on assistant) → evaluate: both simulations against the held-out real conversations,
    both ReaLMs pairwise."""

    def make(**evaluate) -> Path:
        src = write_json_array(sharegpt_records[:120])
        path = make_recipe(src, filters=[{"op": "shape"}, {"op": "split", "max_tokens": 256}], name="ev",
                           held_out_share=0.5)
        doc = yaml.safe_load(path.read_text())
        tiny = str(tiny_model_dir)
        local = {"kind": "local", "model": tiny, "batch_size": 8}
        sim = {"kind": "simulate", "answerer": local, "conversations": 12, "max_rounds": 3,
               "stop_on_degenerate": False, "user_sampling": {"max_new_tokens": 8},
               "assistant_sampling": {"max_new_tokens": 8}, "context_budget": 512}
        realm = {"kind": "sft", "loss_on": "assistant", "base_model": tiny, "max_length": 256, "max_steps": 2,
                 "per_device_train_batch_size": 2, "save_steps": 2}
        doc["steps"].update({
            "usergpt": {"kind": "sft", "loss_on": "user", "base_model": tiny, "dataset": "curate",
                        "end_marker": "<|endconversation|>",
                        "eval_dataset": {"step": "curate", "split": "held_out"}, "max_length": 256,
                        "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "save_steps": 2},
            "sim_usergpt": {**sim, "simulator": "usergpt",
                            "simulator_backend": {"kind": "local", "model": "usergpt", "batch_size": 8}},
            "sim_roleplay": {**sim, "simulator": "roleplay", "simulator_backend": local},
            "realm_usergpt": {**realm, "dataset": "sim_usergpt"},
            "realm_roleplay": {**realm, "dataset": "sim_roleplay"},
        })
        doc["steps"]["evaluate"] = {
            "kind": "evaluate", "tokenizer": tiny, "max_conversations": 40,
            "datasets": [{"name": "sharegpt", "dataset": {"step": "curate", "split": "held_out"}},
                         {"name": "usergpt", "dataset": "sim_usergpt"},
                         {"name": "roleplay", "dataset": "sim_roleplay"}],
            "fidelity": {"simulator_model": "usergpt", "baseline_model": tiny, "real": "sharegpt",
                         "simulated": ["usergpt", "roleplay"], "perplexity_conversations": 6,
                         "max_length": 256, "bootstrap": 20, "frechet_dims": 4, "cv_folds": 3},
            "benchmark": {"questions": str(EVAL), "max_questions": 3, "max_new_tokens": 6,
                          "models": [{"name": "realm-usergpt",
                                      "backend": {"kind": "local", "model": "realm_usergpt"}},
                                     {"name": "realm-roleplay",
                                      "backend": {"kind": "local", "model": "realm_roleplay"}}],
                          "judge": {"kind": "openai", "base_url": judge_url, "model": "judge-1", "max_retries": 0},
                          "judge_max_new_tokens": 16, "modes": ["single", "pairwise"],
                          "pairwise_baseline": "realm-roleplay"},
            **evaluate}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


def test_evaluate_step_end_to_end(eval_recipe, tmp_path):
    import polars as pl
    from datasets import load_dataset

    r = runner.invoke(app, ["build", str(eval_recipe()), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "runs" / "ev" / "evaluate"
    stats = json.loads((out / "stats.json").read_text())
    rep = stats["report"]
    # statistics of every dataset, with the paper's metrics; the real ones are curate's held_out split
    real = rep["datasets"]["sharegpt"]
    sims = {name: rep["datasets"][name] for name in ("usergpt", "roleplay")}
    curated = pl.read_parquet(tmp_path / "runs" / "ev" / "curate" / "data")
    assert 0 < real["conversations"] <= min(40, curated.filter(pl.col("split") == "held_out").height)
    for d in (real, *sims.values()):
        assert d["conversations"] >= 1
        assert d["mtld_paper"] > 0 and d["mtld_joined"] > 0 and 0 < d["distinct_1_user"] <= 1
        assert -1 <= d["topic_cosine_pairs"] <= d["topic_cosine_paper"] <= 1  # the paper's adds the diagonal
        assert 0 <= d["first_turn_diversity_ci95"][0] <= d["first_turn_diversity"] <= d["first_turn_diversity_ci95"][1]
    assert "en" in real["languages"]
    assert rep["dataset_steps"] == {"sharegpt": "curate", "usergpt": "sim_usergpt", "roleplay": "sim_roleplay"}
    # fidelity: both models scored on the same real tokens; one row per simulated dataset
    fid = rep["fidelity"]
    ppl = fid["user_turn_perplexity"]
    assert ppl["simulator"]["tokens"] == ppl["baseline"]["tokens"] > 0
    assert ppl["simulator"]["perplexity"] != ppl["baseline"]["perplexity"]  # trained differs from base
    assert fid["real"] == "sharegpt" and set(fid["simulated"]) == {"usergpt", "roleplay"}
    # ending: teacher-forced on whole held-out conversations, in the perplexity pass
    end = fid["ending"]
    assert end["marker"] == "<|endconversation|>" and 0 < end["conversations"] <= end["selected"]
    assert end["positions"] >= end["conversations"] and 0 <= end["f1"] <= 1 and len(end["f1_ci95"]) == 2
    assert end["true_positive"] + end["false_negative"] == end["conversations"]
    assert fid["role_classifier"]["accuracy"] is not None
    # turn-level measures read the user turns of every segment of the sampled conversations (the
    # statistics count each conversation once): the real reference has more turns than its statistics
    assert fid["turn_unit"]["user_turns"]["sharegpt"] > real["user_turns"]
    assert fid["turn_unit"]["user_turns"]["usergpt"] == sims["usergpt"]["user_turns"]  # a session is never cut
    for name, row in fid["simulated"].items():
        assert set(row) >= {"frechet", "classifier", "rounds", "stop_reasons", "ended_by", "role"}, name
        assert 0 <= row["role"]["role_adherence"] <= 1 and row["rounds"]["total_variation_ci95"] is not None
        fr = row["frechet"]
        assert fr["distance"] is not None and fr["ci95"][0] <= fr["ci95"][1]
        assert 0 <= row["classifier"]["accuracy"] <= 1
        assert sum(row["ended_by"].values()) == pytest.approx(1.0, abs=1e-3)
        sim_stats = json.loads((tmp_path / "runs" / "ev" / f"sim_{name}" / "stats.json").read_text())
        assert row["stop_reasons"] == sim_stats["stop_reasons"]  # from the simulate step that made it
        assert row["rounds"]["real_mean"] == fid["simulated"]["usergpt"]["rounds"]["real_mean"]
    # benchmarks: FastChat files; turn 2 of MT-Bench; judge verdicts as the server gave them
    mt = rep["benchmarks"]["benchmarks"]["mt_bench"]
    assert mt["questions"] == 3 and mt["single"]["realm-usergpt"]["turn_2"] == 7.0
    assert mt["single"]["realm-roleplay"]["n"] == 6
    answers = [json.loads(x) for x in (out / "benchmarks" / "mt_bench" / "model_answer" / "realm-usergpt.jsonl").open()]
    assert len(answers) == 3 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    pair = (out / "benchmarks" / "vicuna_bench" / "model_judgment" / "judge-1_pair.jsonl").read_text().splitlines()
    assert len(pair) == 3 and json.loads(pair[0])["model_1"] == "realm-usergpt"
    assert json.loads(pair[0])["model_2"] == "realm-roleplay"
    # report, plots, metrics table; the published repo loads with datasets (default and judgment configs)
    md = (out / "report.md").read_text()
    assert "## Simulator fidelity" in md and "mt_bench" in md and (out / "plots" / "distributions.png").stat().st_size > 1000
    assert "Ending (teacher-forced" in md and "role adherence" in md and "MTLD, mean over user turns (paper)" in md
    # the test judge always answers A: the report says plainly that it cannot rank the models
    assert "These figures cannot rank the models" in md and "position bias" in md
    assert rep["benchmarks"]["benchmarks"]["vicuna_bench"]["judges"]["judge-1"]["position_bias"] == 1.0
    rows = [line.split(" | ")[0] for line in md[md.index("## Simulator fidelity"):].splitlines()]
    assert "| usergpt" in rows and "| roleplay" in rows  # a fidelity row for each simulation
    assert (out / "plots" / "mt_bench.png").exists()
    # the headline picture (every fidelity measure with its interval) comes first, in the report and the card
    assert rep["plots"][0] == "fidelity" and (out / "plots" / "fidelity.png").stat().st_size > 1000
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)[0] == "plots/fidelity.png"
    ev_card = (tmp_path / "hub" / "datasets" / "realchat" / "ev-evaluate" / "README.md").read_text()
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", ev_card)[0] == "plots/fidelity.png"
    assert ev_card.index("plots/fidelity.png") < ev_card.index("## Load it") < ev_card.index("## Simulator fidelity")
    metrics = pl.read_ndjson(out / "data" / "metrics.jsonl")
    got = metrics.filter((pl.col("metric") == "user_turn_perplexity") & (pl.col("subject") == "simulator"))
    assert got["value"][0] == pytest.approx(ppl["simulator"]["perplexity"])
    frechet = metrics.filter(pl.col("metric") == "frechet_distance")
    assert sorted(frechet["subject"].to_list()) == ["roleplay", "usergpt"]
    hub = tmp_path / "hub" / "datasets" / "realchat" / "ev-evaluate"
    assert load_dataset(str(hub), split="train").num_rows == metrics.height
    single = load_dataset(str(hub), "judgments_single", split="train")
    assert single.num_rows == 2 * (3 * 2 + 3)  # two models × (3 MT-Bench × 2 turns + 3 Vicuna)
    # the simulation dataset cards and the ReaLM model cards now show the figures: each its own
    for sim, name, other in (("sim_usergpt", "usergpt", "roleplay"), ("sim_roleplay", "roleplay", "usergpt")):
        card = (tmp_path / "hub" / "datasets" / "realchat" / f"ev-{sim}" / "README.md").read_text()
        evaluation = card[card.index("## Evaluation"):]
        rows = [line.split(" | ")[0] for line in evaluation[evaluation.index("Fréchet"):].splitlines()]
        assert f"| {name}" in rows and f"| {other}" not in rows  # its own fidelity row only
        assert "## Evaluation" in (tmp_path / "runs" / "ev" / sim / "README.md").read_text()
    for realm in ("realm_usergpt", "realm_roleplay"):
        card = (tmp_path / "hub" / "realchat" / f"ev-{realm}" / "README.md").read_text()
        assert "## Evaluation" in card and "mt_bench" in card[card.index("## Evaluation"):]
        assert "## Evaluation" in (tmp_path / "runs" / "ev" / realm / "README.md").read_text()
    # the simulator's model card shows its perplexity and ending figures
    card = (tmp_path / "runs" / "ev" / "usergpt" / "README.md").read_text()
    evaluation = card[card.index("## Evaluation"):]
    assert "Perplexity on the real user turns" in evaluation and "Ending (teacher-forced" in evaluation
    # a rebuild does nothing
    r = runner.invoke(app, ["build", str(eval_recipe()), "--no-progress"])
    assert r.exit_code == 0 and "evaluate: up to date" in " ".join(r.output.split())


def test_evaluate_recipe_errors_name_the_key(eval_recipe, tmp_path):
    path = eval_recipe()
    doc = yaml.safe_load(path.read_text())
    doc["steps"]["evaluate"]["fidelity"]["real"] = "nope"
    path.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["plan", str(path)])
    assert r.exit_code == 2 and "fidelity.real" in r.output and "nope" in r.output
    doc["steps"]["evaluate"]["fidelity"]["real"] = "sharegpt"
    doc["steps"]["evaluate"]["fidelity"]["simulated"] = "roleplay"  # one name alone is accepted
    doc["steps"]["evaluate"]["benchmark"]["questions"] = str(tmp_path / "missing")
    path.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["plan", str(path)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "steps.evaluate.benchmark.questions" in out and "not found" in out
    (tmp_path / "partial").mkdir()  # the folder is there, FastChat's files are not
    doc["steps"]["evaluate"]["benchmark"]["questions"] = str(tmp_path / "partial")
    path.write_text(yaml.safe_dump(doc))
    r = runner.invoke(app, ["plan", str(path)])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "steps.evaluate.benchmark.questions" in out and "mt_bench" in out


def test_questions_from_a_hub_dataset(hub, tmp_path):
    """HuggingFaceH4/mt_bench_prompts' layout (prompt, prompt_id, category, reference), served by the
    tests' Hub and read through datasets' real Hub client."""
    from huggingface_hub import HfApi

    rows = [{"prompt": ["What is 2+2?", "And times 3?"], "prompt_id": 7, "category": "math",
             "reference": ["4", "12"]},
            {"prompt": ["Write a haiku.", "Now about rain."], "prompt_id": 8, "category": "writing",
             "reference": []}]
    (tmp_path / "q").mkdir()
    with (tmp_path / "q" / "train.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    api = HfApi()
    api.create_repo("tester/mt_bench_prompts", repo_type="dataset")
    api.upload_folder(folder_path=str(tmp_path / "q"), repo_id="tester/mt_bench_prompts", repo_type="dataset")
    cfg = BenchmarkConfig(questions="tester/{bench}_prompts", questions_format="hub",
                          judge_prompts=str(EVAL / "judge_prompts.jsonl"),
                          models=[{"name": "m", "backend": {"kind": "local", "model": "x"}}])
    questions, refs = bm.load_questions(cfg, "mt_bench", Path("."))
    assert [q["question_id"] for q in questions] == [7, 8] and questions[0]["turns"][1] == "And times 3?"
    assert refs == {7: ["4", "12"]}
    assert bm._prompt_name("single", "math", 7 in refs, 2) == "single-math-v1-multi-turn"
    with pytest.raises(Exception, match="cannot load benchmark questions"):
        bm.load_questions(cfg.model_copy(update={"questions": "tester/none"}), "mt_bench", Path("."))


def test_interrupted_evaluation_resumes_without_new_answers(eval_recipe, tmp_path, monkeypatch):
    recipe = eval_recipe(fidelity=None)
    real_judge = bm.judge_single

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bm, "judge_single", interrupted)
    r = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert r.exit_code == 130
    out = tmp_path / "runs" / "ev" / "evaluate"
    assert not out.exists()  # nothing half-written
    assert list((tmp_path / "runs" / "ev" / ".work").rglob("model_answer/*.jsonl"))  # answers kept for the rerun

    made = []
    real_answers = bm.generate_answers
    monkeypatch.setattr(bm, "judge_single", real_judge)
    monkeypatch.setattr(bm, "generate_answers", lambda *a, **k: made.append(a[1]) or real_answers(*a, **k))
    r = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert r.exit_code == 0, r.output
    assert made == []  # every answer came from the interrupted run's work folder
    assert json.loads((out / "stats.json").read_text())["report"]["benchmarks"]["benchmarks"]["mt_bench"]["single"]
    assert not (tmp_path / "runs" / "ev" / ".work").exists() or not list((tmp_path / "runs" / "ev" / ".work").rglob("*.jsonl"))


def test_verdict_first_judging_with_a_local_model(tiny_model_dir):
    from realchat.models.backends import LocalModel

    prompts = bm.load_judge_prompts(bench_cfg(), Path("."))
    questions, refs = bm.load_questions(bench_cfg(), "vicuna_bench", Path("."))
    qs = questions[:2]
    answers = {"m": {q["question_id"]: ["Sleep more."] for q in qs}, "b": {q["question_id"]: ["No."] for q in qs}}
    judge = LocalModel(str(tiny_model_dir), batch_size=2)
    rows = bm.judge_single(judge.chat, "tiny", prompts, qs, refs, answers, 3, verdict_first=True)
    assert len(rows) == 4 and all(r["judgment"].startswith("Rating: [[") for r in rows)
    pair = bm.judge_pairwise(judge.chat, "tiny", prompts, qs, refs, answers, "b", 3, verdict_first=True)
    assert all(r["g1_judgment"].startswith("Verdict: [[") for r in pair)

    def continues(convs, sampling, answer_prefix=""):  # a judge that completes the opened verdict
        return [Generation(answer_prefix + ("8]] fine" if "Rating" in answer_prefix else "B]]")) for _ in convs]

    assert {r["score"] for r in bm.judge_single(continues, "j", prompts, qs, refs, answers, 3, True)} == {8.0}
    assert {(r["g1_winner"], r["g2_winner"]) for r in
            bm.judge_pairwise(continues, "j", prompts, qs, refs, answers, "b", 3, True)} == {("model_2", "model_1")}


def test_verdict_only_with_a_served_judge_needs_its_tokenizer(tiny_model_dir):
    """A served judge's verdict is opened through its tokenizer (a text completion of the rendered
    prompt): allowed with ``judge.tokenizer``, a clear error without."""
    from pydantic import ValidationError

    from realchat.steps.evaluate import EvaluateConfig

    with pytest.raises(ValidationError, match="verdict_only with a served judge needs judge.tokenizer"):
        EvaluateConfig(fidelity=None, benchmark=bench_cfg(judge_mode="verdict_only"))
    served = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "j", "tokenizer": str(tiny_model_dir)}
    cfg = EvaluateConfig(fidelity=None, benchmark=bench_cfg(judge_mode="verdict_only", judge=served))
    assert cfg.benchmark.judge.tokenizer == str(tiny_model_dir)


def test_broken_question_file_names_file_line_and_field(tmp_path):
    from realchat.errors import RealChatError

    root = tmp_path / "eval"
    (root / "mt_bench").mkdir(parents=True)
    (root / "mt_bench" / "question.jsonl").write_text(
        '{"question_id": 1, "category": "math", "turns": ["1+1?"]}\n{"question_id": 2, "turns": "not a list"}\n')
    cfg = BenchmarkConfig(questions=str(root), models=[{"name": "m", "backend": {"kind": "local", "model": "x"}}])
    with pytest.raises(RealChatError) as e:
        bm.load_questions(cfg, "mt_bench", Path("."))
    msg = e.value.render()
    assert "question.jsonl" in msg and "line 2" in msg and "turns" in msg
    (root / "mt_bench" / "question.jsonl").write_text('{"question_id": 1, "turns": ["ok"]}\n{oops\n')
    with pytest.raises(RealChatError, match="not JSON") as e:
        bm.load_questions(cfg, "mt_bench", Path("."))
    assert "line 2" in e.value.render()


def test_sampled_answers_are_reproducible(tiny_model_dir):
    from realchat.models.backends import LocalModel
    from realchat.steps.evaluate import seeded

    questions, _ = bm.load_questions(bench_cfg(), "mt_bench", Path("."))
    writing = [q for q in questions if q["category"] == "writing"][:2]  # FastChat samples these at 0.7
    model = LocalModel(str(tiny_model_dir), batch_size=2)
    runs = [seeded(7, bm.generate_answers, model.chat, "m", writing, 12) for _ in range(2)]
    assert [r["choices"] for r in runs[0]] == [r["choices"] for r in runs[1]]
    assert runs[0][0]["choices"][0]["turns"][0]  # something was generated
