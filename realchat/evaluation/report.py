"""The evaluation report: markdown tables, PNG plots, a flat metrics table, and card sections.

``write_report`` turns an evaluate step's results into ``report.md`` and ``plots/*.png``: first the
headline (``fidelity.png``: every fidelity measure per dataset with its 95 % interval and the real
reference as a line, so a reader sees at a glance which simulation sits closer to real users), then
rounds and user-turn length distributions of every dataset and MT-Bench/Vicuna-Bench scores per category;
``metric_rows`` flattens every figure into rows (section, subject, metric, value, 95 % interval) for
``data/metrics.jsonl``; ``card_section`` is the part of the report that the RealChat dataset card and
the ReaLM model card show.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASET_METRICS = [
    ("conversations", "conversations"), ("mean_rounds", "mean rounds"),
    ("tokens_per_utterance", "tokens / utterance"), ("tokens_per_conversation", "tokens / conversation"),
    ("mtld_paper", "MTLD, mean over user turns (paper) ↑"), ("mtld_joined", "MTLD, user turns joined ↑"),
    ("distinct_1_user", "distinct-1 ↑"), ("distinct_2_user", "distinct-2 ↑"),
    ("topic_cosine_paper", "topic cosine, n×n incl. diagonal (paper) ↓"),
    ("topic_cosine_pairs", "topic cosine, distinct pairs ↓"), ("first_turn_cosine", "first-turn cosine ↓"),
    ("first_turn_diversity", "first-turn diversity (1 − Jaccard) [95% CI] ↑"),
    ("first_turn_distinct_2", "first-turn distinct-2 ↑"),
]

#: Figures with an interval stored beside them as ``<key>_ci95``.
WITH_CI = {"first_turn_diversity"}


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ci(d: dict[str, Any] | None, key: str) -> str:
    if not d or d.get(key) is None:
        return "–"
    ci = d.get("ci95")
    return f"{_fmt(d[key])} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else _fmt(d[key])


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- sections -------------------------------------------------------------------------------------


def datasets_section(results: dict[str, Any], languages: bool = True) -> str:
    """The §4 statistics of every dataset, one column each. ``languages=False`` leaves out the
    languages row (a dataset's own card has its full tally; a second, sampled one would contradict it)."""
    ds = results.get("datasets") or {}
    if not ds:
        return ""
    names = list(ds)
    rows = [[label] + [_ci({"v": ds[n].get(key), "ci95": ds[n].get(f"{key}_ci95")}, "v") if key in WITH_CI
                       else ds[n].get(key) for n in names] for key, label in DATASET_METRICS]
    rows.append(["user-turn tokens p10 / median / p90"] + [
        "{p10} / {median} / {p90}".format(**ds[n]["user_turn_tokens"]) if ds[n].get("user_turn_tokens") else None
        for n in names])
    if languages:
        rows.append(["languages (top 3)"] + [", ".join(f"{k} {v}" for k, v in list(ds[n].get("languages", {}).items())[:3])
                                              for n in names])
    return "## Dataset statistics\n\n" + table(["metric"] + names, rows) + (
        "\n\nMTLD threshold 0.72 (lexicalrichness): the paper's figure is the mean of each user turn's MTLD "
        "(turns without words skipped), ours the MTLD of all user turns joined. Cosine = mean cosine "
        "similarity of MiniLM embeddings of the user turns (lower = more diverse), computed without an n×n "
        "matrix: the paper's mean takes the full matrix, diagonal included (pulled up by 1/n), ours distinct "
        "pairs. First-turn diversity as UserLM: 1 − mean pairwise Jaccard similarity of the first user turns' "
        "lower-cased word sets.\n")


def fidelity_section(results: dict[str, Any], only: list[str] | None = None) -> str:
    """Perplexity of the simulator and its baseline, then one row per simulated dataset (``only``:
    those names) against the held-out real conversations."""
    f = results.get("fidelity")
    if not f:
        return ""
    parts = ["## Simulator fidelity"]
    ppl = f.get("user_turn_perplexity") or {}
    if ppl:
        rows = [[label, f"`{v['model']}`", _ci(v, "perplexity"), v["tokens"], v["conversations"]]
                for label, v in ppl.items()]
        parts.append(f"Perplexity on the real user turns of held-out `{f['real']}` conversations (lower = more "
                     "human-like), each turn given the real conversation so far:\n\n"
                     + table(["model", "ref", "perplexity [95% CI]", "tokens", "conversations"], rows))
    end = f.get("ending") or {}
    if end.get("conversations"):
        parts.append(
            f"Ending (teacher-forced on {end['conversations']} whole held-out `{f['real']}` conversations, "
            f"{end['positions']} positions within the {f.get('max_length', '')}-token window, "
            f"{end['ends_in_window']} real ends among them: after each real assistant turn, is the end "
            f"marker `{end['marker']}` the simulator's most likely next turn? Gold: the real end):\n\n" + table(
                ["model", "precision [95% CI]", "recall [95% CI]", "F1 [95% CI] ↑", "ended exactly right [95% CI]",
                 "ended early", "mean P(end) at the end / before"],
                [[f"`{end['model']}`", _ci({"v": end["precision"], "ci95": end.get("precision_ci95")}, "v"),
                  _ci({"v": end["recall"], "ci95": end.get("recall_ci95")}, "v"),
                  _ci({"v": end["f1"], "ci95": end.get("f1_ci95")}, "v"),
                  _ci({"v": end["exact"], "ci95": end.get("exact_ci95")}, "v"), end["ended_early"],
                  f"{_fmt(end['mean_p_end_at_end'])} / {_fmt(end['mean_p_end_before'])}"]]))
    elif end.get("note"):
        parts.append(f"Ending: not measured ({end['note']}).")
    sims = {k: v for k, v in (f.get("simulated") or {}).items() if only is None or k in only}
    if sims:
        rows = []
        for name, s in sims.items():
            fr, cl, rd = s.get("frechet") or {}, s.get("classifier") or {}, s.get("rounds") or {}
            ended = s.get("ended_by") or {}
            role = s.get("role") or {}
            rows.append([name, _ci(fr, "distance"), _ci(cl, "accuracy"), rd.get("simulated_mean"),
                         _ci({"v": rd.get("total_variation"), "ci95": rd.get("total_variation_ci95")}, "v"),
                         _ci({"v": role.get("role_adherence"), "ci95": role.get("role_adherence_ci95")}, "v"),
                         f"{ended.get('simulator', 0.0):.0%}" if ended else None])
        any_fr = next(iter(sims.values())).get("frechet") or {}
        parts.append(f"Each simulated dataset against the held-out real `{f['real']}` user turns (MiniLM embeddings; "
                     f"Fréchet distance after PCA to {any_fr.get('dims')} dimensions, the real set's split-half "
                     f"distance {_fmt(any_fr.get('real_split_half'))} is the noise floor; classifier accuracy 0.5 "
                     "= indistinguishable; role adherence = share of user turns that do not read like an "
                     "assistant's answer):\n\n" + table(
                         ["simulated", "Fréchet [95% CI] ↓", "classifier accuracy [95% CI] ↓", "mean rounds",
                          "rounds TV distance [95% CI] ↓", "role adherence [95% CI] ↑", "ended by the simulator"],
                         rows))
        real_mean = (next(iter(sims.values())).get("rounds") or {}).get("real_mean")
        parts.append(f"Real conversations run {_fmt(real_mean)} rounds on average (their first segment)."
                     + stopped_by(sims))
        rc = f.get("role_classifier") or {}
        if rc.get("accuracy") is not None:
            parts.append(f"Role adherence is judged by a {rc['method']} ({rc['n_per_class']} turns each); checked "
                         f"by {rc['folds']}-fold cross-validation on those real turns: accuracy "
                         f"{_ci(rc, 'accuracy')}; it calls {_fmt(rc['real_user_turns_answering'])} of real user "
                         "turns answers, the floor a perfect simulator would show."
                         + (" Its accuracy is not clearly above chance here, so role adherence says little."
                            if rc["ci95"][0] <= 0.5 else ""))
        intent_rows = [[name, _ci((s.get("intent_decomposition") or {}), "value"),
                        (s.get("intent_decomposition") or {}).get("turns")]
                       for name, s in sims.items() if s.get("intent_decomposition")]
        if f.get("real_intent_decomposition"):
            d = f["real_intent_decomposition"]
            intent_rows.insert(0, [f"{f['real']} (real)", _ci(d, "value"), d.get("turns")])
        if intent_rows:
            parts.append("Intent decomposition (mean over user turns of the share of the turn's content words that "
                         "are in the conversation's intent; lower = the goal is revealed gradually):\n\n"
                         + table(["dataset", "intent decomposition [95% CI] ↓", "turns"], intent_rows))
    return "\n\n".join(parts) + "\n"


def benchmark_section(results: dict[str, Any]) -> str:
    b = results.get("benchmarks")
    if not b:
        return ""
    parts = [f"## Benchmarks (judge: `{b['judge']}`)"]
    for bench, s in b["benchmarks"].items():
        parts.append(f"### {bench} ({s['questions']} questions)")
        rank = s.get("ranking") or {}
        if rank and not rank["can_rank"]:
            parts.append(f"**These figures cannot rank the models**: {'; '.join(rank['reasons'])}. They show the "
                         "machinery at work, not which model is better.")
        judges = s.get("judges") or {}
        if judges:
            parts.append(table(["judge", "model", "questions", "verdicts", "unparsable", "position bias (first / second)",
                                "orders disagree"],
                               [[name, f"`{b['judge']}`", j["questions"], j["verdicts"],
                                 f"{j['unparsable']} ({j['unparsable_share']:.0%})" if j["unparsable_share"] is not None else None,
                                 f"{j['position_bias']:.0%} / {j['second_position_bias']:.0%}"
                                 if j["position_bias"] is not None else None,
                                 f"{j['inconsistent']:.0%}" if j["inconsistent"] is not None else None]
                                for name, j in judges.items()]))
        if s["single"]:
            parts.append(table(["model", "turn 1", "turn 2", "overall [95% CI]", "valid", "unparsable"],
                               [[m, v["turn_1"], v["turn_2"], _ci({"v": v["overall"], "ci95": v.get("overall_ci95")}, "v"),
                                 v["n"], v["invalid"]] for m, v in s["single"].items()]))
        if s["pairwise"]:
            parts.append(table(["model", "win", "tie", "loss", "unparsable (apart)", "win rate", "win rate (ties ½)"],
                               [[m, v["win"], v["tie"], v["loss"], v.get("unparsable", 0), v["win_rate"],
                                 v["win_rate_adjusted"]] for m, v in s["pairwise"].items()]))
        invalid = {k: v for k, v in s["invalid"].items() if v}
        if invalid:
            parts.append("Unparsable verdicts (FastChat's -1 / error), excluded from the means and from the "
                         "pairwise counts (a pair with an unparsable order is not a tie): "
                         + ", ".join(f"{k} {v}" for k, v in invalid.items()) + ".")
    return "\n\n".join(parts) + "\n"


def write_report(out: Path, results: dict[str, Any], series: dict[str, dict[str, Any]], recipe: str) -> list[str]:
    """Write ``report.md`` and ``plots/``; returns the plot names."""
    plots = make_plots(out / "plots", results, series)
    body = [f"# Evaluation report: {recipe}\n"]
    if HEADLINE in plots:  # the picture that answers "which simulation is closer to real users?" comes first
        body.append(f"![{HEADLINE_CAPTION}](plots/{HEADLINE}.png)\n")
    body.append(report_markdown(results))
    body += [f"![{name}](plots/{name}.png)\n" for name in plots if name != HEADLINE]
    timings = ", ".join(f"{k} {v} s" for k, v in results.get("timings_s", {}).items())
    body.append(f"Time: {timings}; total {results.get('seconds')} s.\n")
    (out / "report.md").write_text("\n".join(s for s in body if s), encoding="utf-8")
    return plots


def stopped_by(sims: dict[str, Any]) -> str:
    """What ended each simulation's sessions, from its stop reasons (``context_budget``, ``max_rounds``,
    the end marker, an empty question, ...): the report says what really stopped them, not what a
    recipe might have capped."""
    said = []
    for name, s in sims.items():
        reasons = s.get("stop_reasons") or {}
        total = sum(reasons.values())
        if total:
            top = sorted(reasons.items(), key=lambda kv: -kv[1])[:3]
            said.append(f"`{name}` " + ", ".join(f"`{r}` {n / total:.0%}" for r, n in top))
    return (" Simulated sessions stopped on: " + "; ".join(said) + ".") if said else ""


def report_markdown(results: dict[str, Any]) -> str:
    """The report's sections (no title, no plots): the evaluation dataset card's body."""
    sections = (datasets_section(results), fidelity_section(results), benchmark_section(results))
    return "\n\n".join(s.strip() for s in sections if s.strip()) + "\n"


def card_section(results: dict[str, Any], step: str, report_repo: str) -> str:
    """What the card of an evaluated dataset or model shows, under one "Evaluation" heading: the
    columns and rows that came from ``step`` (beside the others, for comparison)."""
    datasets = [n for n, s in (results.get("dataset_steps") or {}).items() if s == step]
    models = [n for n, s in (results.get("model_steps") or {}).items() if s == step]
    sections = []
    if datasets:
        sections += [datasets_section(results, languages=False), fidelity_section(results, only=datasets)]
    elif step and step == results.get("simulator_step"):
        sections.append(fidelity_section(results, only=[]))  # the simulator's perplexity and ending
    if models:
        sections.append(benchmark_section(results))
    body = "\n\n".join(s.strip() for s in sections if s.strip())
    if not body.strip():
        return ""
    body = "\n".join("#" + line if line.startswith("##") else line for line in body.splitlines())
    named = ", ".join(f"`{n}`" for n in datasets + models) or "the simulator (`fidelity.simulator_model`)"
    return (f"## Evaluation\n\nFrom RealChat's evaluation in `{report_repo}`, where this artifact is {named}; "
            f"the full report, answers and judgments are there.\n\n{body}\n")


# -- flat figures -----------------------------------------------------------------------------------


def metric_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(section: str, subject: str, metric: str, value: Any, ci: list[float] | None = None) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"section": section, "subject": subject, "metric": metric, "value": float(value),
                         "ci95_low": ci[0] if ci else None, "ci95_high": ci[1] if ci else None})

    for name, d in (results.get("datasets") or {}).items():
        for key, v in d.items():
            add("dataset", name, key, v, d.get(f"{key}_ci95"))
        for key, v in (d.get("user_turn_tokens") or {}).items():
            add("dataset", name, f"user_turn_tokens_{key}", v)
    f = results.get("fidelity") or {}
    for label, v in (f.get("user_turn_perplexity") or {}).items():
        add("fidelity", label, "user_turn_perplexity", v.get("perplexity"), v.get("ci95"))
    for name, s in (f.get("simulated") or {}).items():
        fr, cl = s.get("frechet") or {}, s.get("classifier") or {}
        add("fidelity", name, "frechet_distance", fr.get("distance"), fr.get("ci95"))
        add("fidelity", f["real"], "frechet_real_split_half", fr.get("real_split_half"))
        add("fidelity", name, "classifier_accuracy", cl.get("accuracy"), cl.get("ci95"))
        for k, v in (s.get("ended_by") or {}).items():
            add("fidelity", name, f"ended_by_{k}", v)
        rd = s.get("rounds") or {}
        add("fidelity", name, "rounds_total_variation", rd.get("total_variation"), rd.get("total_variation_ci95"))
        role = s.get("role") or {}
        add("fidelity", name, "role_adherence", role.get("role_adherence"), role.get("role_adherence_ci95"))
        d = s.get("intent_decomposition") or {}
        add("fidelity", name, "intent_decomposition", d.get("value"), d.get("ci95"))
    end = f.get("ending") or {}
    for key in ("precision", "recall", "f1", "exact"):
        add("fidelity", "simulator", f"ending_{key}", end.get(key), end.get(f"{key}_ci95"))
    rc = f.get("role_classifier") or {}
    add("fidelity", f.get("real", "real"), "role_classifier_accuracy", rc.get("accuracy"), rc.get("ci95"))
    for bench, s in ((results.get("benchmarks") or {}).get("benchmarks") or {}).items():
        for model, v in s["single"].items():
            for key in ("turn_1", "turn_2", "overall", "invalid"):
                add(bench, model, f"score_{key}", v.get(key))
        for model, v in s["single"].items():
            add(bench, model, "score_overall_with_ci", v.get("overall"), v.get("overall_ci95"))
        for model, v in s["pairwise"].items():
            for key in ("win", "tie", "loss", "unparsable", "win_rate_adjusted"):
                add(bench, model, f"pairwise_{key}", v.get(key))
        for judge, j in (s.get("judges") or {}).items():
            for key in ("questions", "unparsable_share", "position_bias", "second_position_bias", "inconsistent"):
                add(bench, judge, f"judge_{key}", j.get(key))
        if s.get("ranking"):
            add(bench, "judgments", "can_rank_models", float(s["ranking"]["can_rank"]))
    return rows


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The few figures the CLI prints after the step (and the card's summary table)."""
    h: dict[str, Any] = {}
    for name, d in (results.get("datasets") or {}).items():
        h[f"{name}_conversations"] = d.get("conversations")
        h[f"{name}_mtld_paper"] = d.get("mtld_paper")
        h[f"{name}_topic_cosine_paper"] = d.get("topic_cosine_paper")
        h[f"{name}_first_turn_diversity"] = d.get("first_turn_diversity")
    f = results.get("fidelity") or {}
    for label, v in (f.get("user_turn_perplexity") or {}).items():
        h[f"{label}_user_perplexity"] = v.get("perplexity")
    for name, s in (f.get("simulated") or {}).items():
        h[f"{name}_frechet_distance"] = (s.get("frechet") or {}).get("distance")
        h[f"{name}_classifier_accuracy"] = (s.get("classifier") or {}).get("accuracy")
        h[f"{name}_role_adherence"] = (s.get("role") or {}).get("role_adherence")
    if (f.get("ending") or {}).get("f1") is not None:
        h["simulator_ending_f1"] = f["ending"]["f1"]
    for bench, s in ((results.get("benchmarks") or {}).get("benchmarks") or {}).items():
        for model, v in s["single"].items():
            h[f"{bench}_{model}_score"] = v.get("overall")
        if s.get("ranking"):
            h[f"{bench}_can_rank_models"] = s["ranking"]["can_rank"]
    usage = results.get("usage") or {}
    if usage:  # the judge's and the benchmark models' tokens (cost with a price table), all runs
        h["served_tokens"] = usage.get("total_tokens")
        if usage.get("cost") is not None:
            h["served_cost"] = f"{usage['cost']:.4f} {usage['currency']}"
    h["seconds"] = results.get("seconds")
    return h


# -- plots ----------------------------------------------------------------------------------------

#: The headline plot's name (``plots/fidelity.png``); first in ``report.md`` and in the evaluation card.
HEADLINE = "fidelity"
HEADLINE_CAPTION = "fidelity: each measure per dataset with its 95% interval; the line is the real reference"


@dataclass
class Panel:
    """One measure of the headline plot: a point per dataset (or model) with its 95 % interval, and the
    value a simulation would show if it were real users (``reference``), drawn as a line."""

    key: str
    title: str
    #: (label, value, 95 % interval or None, is the real data)
    rows: list[tuple[str, float, list[float] | None, bool]]
    reference: float | None = None
    reference_label: str = ""


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fidelity_panels(results: dict[str, Any]) -> list[Panel]:
    """The headline's panels, from the figures the report's tables show (only those that were measured):
    perplexity of the simulator and its baseline on real user turns, Fréchet distance (reference: the
    real set's split-half distance), real-vs-simulated classifier accuracy (reference: 0.5, chance),
    first-turn diversity of every dataset (reference: the real one's), role adherence (reference: the
    real user turns' own share under the same classifier) and the ending F1 (reference: 1, perfect)."""
    f = results.get("fidelity") or {}
    sims = f.get("simulated") or {}
    real = f.get("real")
    panels: list[Panel] = []
    ppl = [(f"{label}: {Path(str(v.get('model'))).name}", v["perplexity"], v.get("ci95"), False)
           for label, v in (f.get("user_turn_perplexity") or {}).items() if _num(v.get("perplexity"))]
    if ppl:
        panels.append(Panel("perplexity", "perplexity on real user turns ↓", ppl))
    rows = [(n, s["frechet"]["distance"], s["frechet"].get("ci95"), False) for n, s in sims.items()
            if _num((s.get("frechet") or {}).get("distance"))]
    if rows:
        floor = next((s["frechet"].get("real_split_half") for s in sims.values()
                      if _num((s.get("frechet") or {}).get("real_split_half"))), None)
        panels.append(Panel("frechet", "Fréchet distance to real user turns ↓", rows, floor,
                            f"real split-half {_fmt(floor)}" if floor is not None else ""))
    rows = [(n, s["classifier"]["accuracy"], s["classifier"].get("ci95"), False) for n, s in sims.items()
            if _num((s.get("classifier") or {}).get("accuracy"))]
    if rows:
        panels.append(Panel("classifier", "real-vs-simulated classifier accuracy ↓", rows, 0.5,
                            "0.5: indistinguishable"))
    ds = results.get("datasets") or {}
    rows = [(n, d["first_turn_diversity"], d.get("first_turn_diversity_ci95"), n == real) for n, d in ds.items()
            if _num(d.get("first_turn_diversity")) and (not sims or n == real or n in sims)]
    if rows:
        ref = (ds.get(real) or {}).get("first_turn_diversity") if real else None
        panels.append(Panel("first_turn_diversity", "first-turn diversity (1 − Jaccard) ↑", rows,
                            ref if _num(ref) else None, f"real ({real}) {_fmt(ref)}" if _num(ref) else ""))
    rows = [(n, s["role"]["role_adherence"], s["role"].get("role_adherence_ci95"), False) for n, s in sims.items()
            if _num((s.get("role") or {}).get("role_adherence"))]
    if rows:
        answering = (f.get("role_classifier") or {}).get("real_user_turns_answering")
        ref = 1 - answering if _num(answering) else None
        panels.append(Panel("role_adherence", "role adherence (turns that ask, not answer) ↑", rows, ref,
                            f"real user turns {_fmt(ref)}" if ref is not None else ""))
    end = f.get("ending") or {}
    if _num(end.get("f1")):
        panels.append(Panel("ending_f1", "ending F1 (teacher-forced) ↑",
                            [(f"simulator: {end.get('model')}", end["f1"], end.get("f1_ci95"), False)], 1.0,
                            "1: every end found"))
    return panels


def fidelity_plot(folder: Path, results: dict[str, Any]) -> list[str]:
    """Draw :func:`fidelity_panels` into ``folder/fidelity.png``, one panel per measure, three to a row;
    returns the panels' keys (also written into the PNG's ``Description``), or ``[]`` when nothing was
    measured. The real data is grey, each simulation keeps its colour in every panel."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = fidelity_panels(results)
    if not panels:
        return []
    names = list(dict.fromkeys(label for p in panels for label, _, _, real in p.rows if not real))
    palette = plt.get_cmap("tab10")
    colour = {n: palette(i % 10) for i, n in enumerate(names)}
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 0.9 + 2.2 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        for y, (label, value, ci, real) in enumerate(p.rows):
            err = None
            if ci and len(ci) == 2 and _num(ci[0]) and _num(ci[1]):
                err = [[max(value - ci[0], 0.0)], [max(ci[1] - value, 0.0)]]
            ax.errorbar([value], [y], xerr=err, fmt="o", capsize=4, color="0.45" if real else colour[label])
        ax.set_yticks(range(len(p.rows)), [label for label, *_ in p.rows])
        ax.set_ylim(-0.7, len(p.rows) - 0.3)
        ax.invert_yaxis()
        if p.reference is not None:
            ax.axvline(p.reference, color="0.3", linestyle="--", linewidth=1, label=p.reference_label)
            ax.legend(loc="best", fontsize=7, frameon=False)
        ax.set_title(p.title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Which simulation sits closer to real users? (95% intervals; dashed: the real reference)",
                 fontsize=10)
    fig.tight_layout()
    keys = [p.key for p in panels]
    fig.savefig(folder / f"{HEADLINE}.png", dpi=110,
                metadata={"Title": "RealChat fidelity headline", "Description": "panels: " + ",".join(keys)})
    plt.close(fig)
    return keys


def make_plots(folder: Path, results: dict[str, Any], series: dict[str, dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    made = [HEADLINE] if fidelity_plot(folder, results) else []
    if series:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        top = max((max(s["rounds"]) if s["rounds"] else 1) for s in series.values())
        bins = np.arange(1, min(top, 30) + 2) - 0.5
        for name, s in series.items():
            axes[0].hist(np.clip(s["rounds"], 1, bins[-1] - 0.5), bins=bins, alpha=0.55, density=True, label=name)
            lengths = np.asarray(s["user_turn_tokens"]) + 1
            if len(lengths):
                axes[1].hist(lengths, bins=np.logspace(0, np.log10(max(lengths.max(), 10)), 30), alpha=0.55,
                             weights=np.full(len(lengths), 1 / len(lengths)), label=name)
        axes[0].set(title="rounds per conversation", xlabel="rounds", ylabel="share")
        axes[1].set(title="user-turn length", xlabel="tokens + 1 (log bins)", ylabel="share", xscale="log")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(folder / "distributions.png", dpi=110)
        plt.close(fig)
        made.append("distributions")
    for bench, s in ((results.get("benchmarks") or {}).get("benchmarks") or {}).items():
        cats = s.get("per_category") or {}
        if not cats:
            continue
        names = sorted({c for v in cats.values() for c in v})
        fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 3.6))
        width = 0.8 / len(cats)
        for k, (model, v) in enumerate(cats.items()):
            ax.bar(np.arange(len(names)) + k * width, [v.get(c, 0) for c in names], width, label=model)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right")
        title = f"{bench}: mean judge score per category"
        rank = s.get("ranking") or {}
        if rank and not rank["can_rank"]:
            title += "\nthis judge cannot rank these models (see the report)"
        ax.set(title=title, ylim=(0, 10), ylabel="score (1-10)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"{bench}.png", dpi=110)
        plt.close(fig)
        made.append(bench)
    return made
