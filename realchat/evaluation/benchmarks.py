"""MT-Bench and Vicuna-Bench: answers from each model, graded by an LLM judge with FastChat's prompts.

Everything is written in FastChat's ``llm_judge`` file formats, so our files feed FastChat's own tools
and theirs feed ``realchat eval show``:

* answers: ``<bench>/model_answer/<model>.jsonl``, rows ``{question_id, answer_id, model_id,
  choices: [{index, turns}], tstamp}``; MT-Bench's second turn sees the model's own first answer;
* single-answer grading: ``<bench>/model_judgment/<judge>_single.jsonl``, rows ``{question_id, model,
  judge: [judge, prompt name], user_prompt, judgment, score, turn, tstamp}``; categories that need a
  reference (math, reasoning, coding) get the ``-math`` prompt with GPT-4's reference answer, turn 2
  gets the ``-multi-turn`` prompt; an unparsable verdict scores -1;
* pairwise: ``<judge>_pair.jsonl``, rows ``{question_id, model_1, model_2, g1_winner, g2_winner, judge,
  g1_user_prompt, g1_judgment, g2_user_prompt, g2_judgment, turn, tstamp}``: each pair is judged in
  both orders (g2 with the answers swapped) to cancel position bias; winners are mapped back to
  ``model_1``/``model_2``/``tie``/``error``.

The per-category temperatures are FastChat's (0 = greedy for extraction, math, coding, reasoning).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from realchat.errors import RealChatError
from realchat.evaluation.judge import parse_pair, parse_score, read_jsonl
from realchat.models.backends import Backend, OpenAIBackend
from realchat.recipe.base import SamplingParams, Strict
from realchat.recipe.refs import FileRef, resolve_local

#: Categories graded against a reference answer (FastChat's NEED_REF_CATS).
NEED_REF_CATS = {"math", "reasoning", "coding", "arena-hard-200"}
#: FastChat's answer temperatures per MT-Bench category (others: 0.7).
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
               "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
#: What FastChat records as the judgment when the judge could not be reached.
API_ERROR = "$ERROR$"

Question = dict[str, Any]  # {question_id, category, turns: [str, ...]}
ChatFn = Callable[[list[list[dict[str, str]]], SamplingParams], list[Any]]


class BenchModel(Strict):
    """A model answering the benchmark questions: local weights, an sft step's model, or an endpoint."""

    #: ``model_id`` in the FastChat answer and judgment files.
    name: str
    #: Where its answers come from: `{kind: local, model: <step or model>}`, an OpenAI-compatible
    #: endpoint, or vLLM.
    backend: Backend


class BenchmarkConfig(Strict):
    """MT-Bench / Vicuna-Bench: answers from each model, judged by an LLM with FastChat's prompts."""

    #: Where the questions, GPT-4 reference answers and judge prompts come from. `fastchat`: FastChat's
    #: files at a pinned commit, downloaded once (at `plan`) into the RealChat cache and checked by
    #: sha256; offline, `realchat fetch-eval --from DIR` puts them there. Otherwise a folder in FastChat's
    #: ``llm_judge/data`` layout (``<bench>/question.jsonl``, ``<bench>/reference_answer/gpt-4.jsonl``,
    #: ``judge_prompts.jsonl``), relative to the recipe, read as it is; or, with ``questions_format:
    #: hub``, a Hub dataset id per benchmark (``{bench}`` is replaced by the benchmark name).
    questions: str = "fastchat"
    #: `fastchat_dir`: `questions` is `fastchat` or a folder in FastChat's layout; `hub`: a Hub dataset
    #: id (needs network).
    questions_format: Literal["fastchat_dir", "hub"] = "fastchat_dir"
    #: With a `questions` folder: a Hub dataset id per benchmark (`{bench}` replaced) read instead when
    #: the folder is not there (needs network, and only when the evaluate step runs), e.g.
    #: `HuggingFaceH4/{bench}_prompts`.
    questions_hub: str | None = None
    #: FastChat's ``judge_prompts.jsonl``; default: the one in ``questions`` (required with ``hub``).
    judge_prompts: FileRef | None = None
    #: Which benchmarks to run.
    benchmarks: list[Literal["mt_bench", "vicuna_bench"]] = Field(default_factory=lambda: ["mt_bench", "vicuna_bench"])
    #: Questions per benchmark, taken round-robin over categories so a small pass still spans them.
    #: null = all (80 for MT-Bench, 80 for Vicuna-Bench).
    max_questions: int | None = Field(None, ge=1)
    #: The models that answer the questions (each a `name` and a `backend`).
    models: list[BenchModel] = Field(default_factory=list)
    #: Answer length and FastChat's per-category temperatures (0 → greedy).
    max_new_tokens: int = Field(1024, ge=1)
    #: The LLM judge: an OpenAI-compatible endpoint (default GPT-4), a local model or vLLM. A grade
    #: outside FastChat's 1-10 (``[[0]]``, ``[[85]]``) counts as unparsable (-1), as the card reports.
    judge: Backend = OpenAIBackend(base_url="https://api.openai.com/v1", model="gpt-4")
    #: Length of the judge's answer.
    judge_max_new_tokens: int = Field(2048, ge=1)
    #: ``explain``: FastChat's way (an explanation, then the verdict). ``verdict_only``: the judge's
    #: answer is opened with "Rating: [[" / "Verdict: [[" so it states the verdict at once: for small
    #: local judges that otherwise never reach FastChat's format (local or vLLM judges only).
    judge_mode: Literal["explain", "verdict_only"] = "explain"
    #: ``single``: 1-10 grades; ``pairwise``: each model against ``baseline`` in both orders.
    modes: list[Literal["single", "pairwise"]] = Field(default_factory=lambda: ["single"])
    #: The reference model of pairwise comparisons (a name from ``models``).
    pairwise_baseline: str | None = None


# -- questions ------------------------------------------------------------------------------------


def questions_root(cfg: BenchmarkConfig, base_dir: Path) -> Path:
    """The folder in FastChat's layout that ``questions`` names: the cache's pinned copy for
    ``fastchat`` (:mod:`realchat.evaluation.fastchat_data`), else the folder relative to the recipe."""
    from realchat.evaluation import fastchat_data

    if cfg.questions == fastchat_data.FASTCHAT:
        return fastchat_data.cache_folder()
    return resolve_local(cfg.questions, base_dir)


def load_questions(cfg: BenchmarkConfig, bench: str, base_dir: Path) -> tuple[list[Question], dict[int, list[str]]]:
    """(questions, reference answers by question id) of one benchmark."""
    from realchat.evaluation import fastchat_data

    if cfg.questions_format == "hub":
        return _hub_questions(cfg.questions.replace("{bench}", bench))
    if cfg.questions == fastchat_data.FASTCHAT:
        fastchat_data.fetch([bench])  # a no-op when the cache has them (checked at plan)
    elif cfg.questions_hub and not questions_root(cfg, base_dir).is_dir():
        return _hub_questions(cfg.questions_hub.replace("{bench}", bench),
                              f"{questions_root(cfg, base_dir)} is not there either")
    root = questions_root(cfg, base_dir) / bench
    questions = []
    path = root / "question.jsonl"
    for i, row in enumerate(read_jsonl(path), 1):
        if not isinstance(row.get("turns"), list) or "question_id" not in row:
            raise RealChatError("a question needs question_id and a list of turns", file=str(path),
                                record=f"line {i}", field="turns")
        questions.append({"question_id": row["question_id"], "category": row.get("category", "general"),
                          "turns": [str(t) for t in row["turns"]]})
    refs: dict[int, list[str]] = {}
    ref_file = root / "reference_answer" / "gpt-4.jsonl"
    if ref_file.exists():
        for row in read_jsonl(ref_file):
            refs[row["question_id"]] = row["choices"][0]["turns"]
    return questions, refs


def _hub_questions(repo: str, also: str = "") -> tuple[list[Question], dict[int, list[str]]]:
    """A Hub dataset of questions: FastChat's columns, or HuggingFaceH4/mt_bench_prompts' (prompt,
    prompt_id, category, reference)."""
    from datasets import load_dataset

    try:
        ds = load_dataset(repo, split="train")
    except Exception as e:  # noqa: BLE001 - network, auth, missing repo: one message
        raise RealChatError(f"cannot load benchmark questions from the Hub dataset {repo} (offline?): "
                            f"{type(e).__name__}: {e}" + (f"; {also}" if also else ""),
                            field="benchmark.questions",
                            hint="put FastChat's llm_judge/data folder where benchmark.questions points, or "
                                 "build without the evaluate step") from None
    questions, refs = [], {}
    for i, row in enumerate(ds):
        qid = row.get("question_id", row.get("prompt_id", i))
        turns = row.get("turns") or row.get("prompt")
        if not isinstance(turns, list):
            raise RealChatError("a question needs a list of turns (column turns or prompt)", file=repo,
                                record=str(qid), field="turns")
        questions.append({"question_id": qid, "category": row.get("category", "general"), "turns": turns})
        ref = row.get("reference")
        if ref:
            refs[qid] = list(ref)
    return questions, refs


def select_questions(questions: list[Question], limit: int | None) -> list[Question]:
    """The first ``limit`` questions taken round-robin over categories (all when ``limit`` is None)."""
    if limit is None or limit >= len(questions):
        return questions
    by_cat: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_cat[q["category"]].append(q)
    picked: list[Question] = []
    depth = 0
    while len(picked) < limit:
        for qs in by_cat.values():
            if depth < len(qs) and len(picked) < limit:
                picked.append(qs[depth])
        depth += 1
    return sorted(picked, key=lambda q: q["question_id"])


def judge_prompts_path(cfg: BenchmarkConfig, base_dir: Path) -> Path:
    if cfg.judge_prompts:
        return resolve_local(cfg.judge_prompts, base_dir)
    return questions_root(cfg, base_dir) / "judge_prompts.jsonl"


def load_judge_prompts(cfg: BenchmarkConfig, base_dir: Path) -> dict[str, dict[str, Any]]:
    from realchat.evaluation import fastchat_data

    if cfg.questions == fastchat_data.FASTCHAT and not cfg.judge_prompts:
        fastchat_data.fetch([])  # the judge prompts alone; a no-op when cached
    path = judge_prompts_path(cfg, base_dir)
    if not path.is_file():  # the questions may have come from the Hub: FastChat's judge prompts did not
        raise RealChatError(f"FastChat's judge prompts not found: {path}", field="benchmark.judge_prompts",
                            hint="point benchmark.judge_prompts at FastChat's llm_judge/data/judge_prompts.jsonl")
    prompts = {}
    for i, row in enumerate(read_jsonl(path), 1):
        if not {"name", "system_prompt", "prompt_template"} <= set(row):
            raise RealChatError("a judge prompt needs name, system_prompt and prompt_template", file=str(path),
                                record=f"line {i}")
        prompts[row["name"]] = row
    return prompts


# -- answers --------------------------------------------------------------------------------------


def generate_answers(chat: ChatFn, model_id: str, questions: list[Question], max_new_tokens: int) -> list[dict[str, Any]]:
    """FastChat answer rows: every turn of every question, turn k seeing the model's own answers before it."""
    convs: dict[Any, list[dict[str, str]]] = {q["question_id"]: [] for q in questions}
    answers: dict[Any, list[str]] = {q["question_id"]: [] for q in questions}
    for turn in range(max(len(q["turns"]) for q in questions)):
        live = [q for q in questions if turn < len(q["turns"])]
        by_temp: dict[float, list[Question]] = defaultdict(list)
        for q in live:
            by_temp[TEMPERATURE.get(q["category"], 0.7)].append(q)
        for temp, qs in by_temp.items():
            for q in qs:
                convs[q["question_id"]].append({"role": "user", "content": q["turns"][turn]})
            gens = chat([convs[q["question_id"]] for q in qs],
                        SamplingParams(temperature=temp, top_p=1.0, max_new_tokens=max_new_tokens))
            for q, g in zip(qs, gens):
                text = API_ERROR if g.error else g.text.strip()
                convs[q["question_id"]].append({"role": "assistant", "content": text})
                answers[q["question_id"]].append(text)
    now = time.time()
    return [{"question_id": q["question_id"], "answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{model_id}/{q['question_id']}").hex,
             "model_id": model_id, "choices": [{"index": 0, "turns": answers[q["question_id"]]}], "tstamp": now}
            for q in questions]


# -- judging --------------------------------------------------------------------------------------


def _prompt_name(kind: str, category: str, has_ref: bool, turn: int) -> str:
    base = {"single": "single-v1", "pair": "pair-v2"}[kind]
    if category in NEED_REF_CATS and has_ref:
        base = "single-math-v1" if kind == "single" else "pair-math-v1"
    return base + ("-multi-turn" if turn == 2 else "")


def _fill(template: str, values: dict[str, str]) -> str:
    # str.format would choke on braces inside answers; only our own placeholders are replaced
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def _values(q: Question, ref: list[str] | None, **answers: list[str]) -> dict[str, str]:
    v = {"question": q["turns"][0]}
    for i, t in enumerate(q["turns"][:2], 1):
        v[f"question_{i}"] = t
    for i, t in enumerate((ref or [])[:2], 1):
        v[f"ref_answer_{i}"] = t
    for key, turns in answers.items():
        v[key] = turns[0] if turns else ""
        for i, t in enumerate(turns[:2], 1):
            v[f"{key}_{i}"] = t
    return v


def _judge_messages(prompt: dict[str, Any], values: dict[str, str]) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": prompt["system_prompt"]}] if prompt.get("system_prompt") else []
    return msgs + [{"role": "user", "content": _fill(prompt["prompt_template"], values)}]


#: Verdict-first judging (``judge_mode: verdict_only``): the judge's answer is opened with these, so
#: it writes the verdict in FastChat's format at once instead of an explanation first.
VERDICT_PREFIX = {"single": "Rating: [[", "pair": "Verdict: [["}


def _ask(chat: ChatFn, convs: list[list[dict[str, str]]], sampling: SamplingParams, prefix: str | None) -> list[Any]:
    return chat(convs, sampling, answer_prefix=prefix) if prefix else chat(convs, sampling)  # type: ignore[call-arg]


def judge_single(chat: ChatFn, judge_name: str, prompts: dict[str, dict[str, Any]], questions: list[Question],
                 refs: dict[Any, list[str]], answers: dict[str, dict[Any, list[str]]],
                 max_new_tokens: int, verdict_first: bool = False) -> list[dict[str, Any]]:
    """One FastChat single-grading row per (model, question, turn)."""
    jobs = []
    for model, by_q in answers.items():
        for q in questions:
            for turn in range(1, min(len(q["turns"]), 2) + 1):
                name = _prompt_name("single", q["category"], q["question_id"] in refs, turn)
                values = _values(q, refs.get(q["question_id"]), answer=by_q[q["question_id"]])
                jobs.append((model, q, turn, name, _judge_messages(prompts[name], values)))
    gens = _ask(chat, [j[4] for j in jobs], SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
                VERDICT_PREFIX["single"] if verdict_first else None)
    now = time.time()
    rows = []
    for (model, q, turn, name, msgs), g in zip(jobs, gens):
        judgment = API_ERROR if g.error else g.text
        rows.append({"question_id": q["question_id"], "model": model, "judge": [judge_name, name],
                     "user_prompt": msgs[-1]["content"], "judgment": judgment,
                     "score": -1 if g.error else parse_score(judgment), "turn": turn, "tstamp": now})
    return rows


def judge_pairwise(chat: ChatFn, judge_name: str, prompts: dict[str, dict[str, Any]], questions: list[Question],
                   refs: dict[Any, list[str]], answers: dict[str, dict[Any, list[str]]], baseline: str,
                   max_new_tokens: int, verdict_first: bool = False) -> list[dict[str, Any]]:
    """One FastChat pairwise row per (model vs baseline, question, turn), judged in both orders."""
    jobs = []
    for model in answers:
        if model == baseline:
            continue
        for q in questions:
            a, b = answers[model][q["question_id"]], answers[baseline][q["question_id"]]
            for turn in range(1, min(len(q["turns"]), 2) + 1):
                name = _prompt_name("pair", q["category"], q["question_id"] in refs, turn)
                ref = refs.get(q["question_id"])
                g1 = _judge_messages(prompts[name], _values(q, ref, answer_a=a, answer_b=b))
                g2 = _judge_messages(prompts[name], _values(q, ref, answer_a=b, answer_b=a))
                jobs.append((model, q, turn, name, g1, g2))
    flat = [m for j in jobs for m in (j[4], j[5])]
    gens = _ask(chat, flat, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens),
                VERDICT_PREFIX["pair"] if verdict_first else None)
    now = time.time()
    g1_map = {"A": "model_1", "B": "model_2"}
    g2_map = {"A": "model_2", "B": "model_1"}
    rows = []
    for k, (model, q, turn, name, m1, m2) in enumerate(jobs):
        r1, r2 = gens[2 * k], gens[2 * k + 1]
        j1 = API_ERROR if r1.error else r1.text
        j2 = API_ERROR if r2.error else r2.text
        w1 = "error" if r1.error else parse_pair(j1)
        w2 = "error" if r2.error else parse_pair(j2)
        rows.append({"question_id": q["question_id"], "model_1": model, "model_2": baseline,
                     "g1_winner": g1_map.get(w1, w1), "g2_winner": g2_map.get(w2, w2),
                     "judge": [judge_name, name], "g1_user_prompt": m1[-1]["content"], "g1_judgment": j1,
                     "g2_user_prompt": m2[-1]["content"], "g2_judgment": j2, "turn": turn, "tstamp": now})
    return rows


def per_category(rows: list[dict[str, Any]], categories: dict[Any, str]) -> dict[str, dict[str, float]]:
    """Mean valid single-grading score per model and category (for the report's bar chart)."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if "score" in r and float(r["score"]) >= 0:
            acc[r["model"]][categories.get(r["question_id"], "?")].append(float(r["score"]))
    return {m: {c: round(sum(v) / len(v), 3) for c, v in sorted(cats.items())} for m, cats in acc.items()}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSON lines, written whole or not at all (a resumed evaluation trusts any file it finds)."""
    from realchat.files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def safe_name(name: str) -> str:
    """A model or judge name as a file name (FastChat names files after the model id)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
