"""Progress a person can follow: timed plain lines in a job log (no ``\\r``), bars on a terminal, and
a real build whose stdout and stderr are pipes printing training progress with its figures."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from realchat.progress import Reporter, format_figures
from rich.console import Console


def _log_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=80), buf  # a file: not a terminal, as in a job log


def test_job_log_lines_carry_count_rate_eta_and_figures_at_the_interval():
    console, buf = _log_console()
    reporter = Reporter(console, interval_s=0.0, prefix="sim")
    with reporter.counter("simulate", total=4, unit="sessions") as c:
        for _ in range(4):
            c.advance(1, tokens_per_s=412.345, loss=1.23456789, turns=1234)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "[sim] simulate: 0/4 sessions (0%) | started"
    assert len(lines) == 6  # started, one per advance (interval 0), done
    assert "4/4 sessions (100%)" in lines[-1] and lines[-1].split(" | ")[-4:-3] == ["done"]
    mid = lines[2]
    assert mid.startswith("[sim] simulate: 2/4 sessions (50%) | ") and " sessions/s | " in mid
    assert "| eta 0:00:00 |" in mid and mid.endswith("tokens/s 412.3 | loss 1.235 | turns 1,234")
    assert max(len(x) for x in lines) > 80  # one line each, never folded at the console's width
    assert "\r" not in buf.getvalue() and "\x1b" not in buf.getvalue()


def test_job_log_waits_for_the_interval_and_a_disabled_reporter_prints_nothing():
    console, buf = _log_console()
    items = list(Reporter(console, interval_s=3600).track(range(1000), "read"))
    assert items == list(range(1000))
    lines = buf.getvalue().splitlines()
    assert lines[0] == "read: 0/1,000 items (0%) | started" and lines[1].startswith("read: 1,000/1,000 items (100%)")
    assert len(lines) == 2  # nothing between: the interval has not passed
    console, buf = _log_console()
    assert list(Reporter(console, enabled=False).track(iter("abc"), "read")) == ["a", "b", "c"]
    assert buf.getvalue() == ""


def test_terminal_shows_bars_and_ends_with_one_plain_summary_line():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    reporter = Reporter(console, interval_s=0.0)
    with reporter.counter("train", total=3, unit="steps") as outer:
        list(reporter.track(range(5), "inner"))  # a nested counter shares the one live display
        outer.advance(3, loss=0.5)
    text = buf.getvalue()
    assert "train: 3/3 steps (100%)" in text and "loss 0.5" in text
    assert "\x1b" in text  # a terminal: the live display draws with control codes


def test_figures_format():
    assert format_figures({"tokens_per_s": 12345.6, "loss": 0.123456, "n": 5, "x": None, "mode": "packed"}) == \
        "tokens/s 12,346 | loss 0.1235 | n 5 | mode packed"


def test_build_in_a_job_log_prints_training_progress_lines(make_recipe, write_json_array, sharegpt_records,
                                                           tiny_model_dir, tmp_path):
    """A real ``realchat build`` with stdout and stderr as pipes (a job log): the sft step's training
    prints plain progress lines with its step count, loss and tokens/s, a simulation the tokens it is
    generating before any session ends; nothing uses ``\\r``; the summary table is not folded at 80
    columns."""
    src = write_json_array(sharegpt_records[:40])
    path = make_recipe(src, filters=[{"op": "shape"}, {"op": "split", "max_tokens": 256}], name="pg")
    doc = yaml.safe_load(path.read_text())
    doc["steps"]["usergpt"] = {
        "kind": "sft", "loss_on": "user", "base_model": str(tiny_model_dir), "dataset": "curate",
        "max_length": 256, "max_steps": 4, "per_device_train_batch_size": 2, "learning_rate": 5e-3,
        "warmup_ratio": 0.0, "save_steps": 10,
    }
    tiny = {"kind": "local", "model": str(tiny_model_dir), "batch_size": 2}
    doc["steps"]["sim"] = {"kind": "simulate", "simulator": "magpie", "simulator_backend": tiny, "answerer": tiny,
                           "conversations": 2, "max_rounds": 1, "user_sampling": {"max_new_tokens": 6},
                           "assistant_sampling": {"max_new_tokens": 6}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "REALCHAT_PROGRESS_INTERVAL": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "realchat.cli", "build", str(path), "--no-push"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "\r" not in log
    train = [x for x in proc.stderr.splitlines() if x.startswith("[usergpt] train: ")]
    assert train[0] == "[usergpt] train: 0/4 steps (0%) | started"
    assert train[-1].startswith("[usergpt] train: 4/4 steps (100%) | ") and "| done" in train[-1]
    running = [x for x in train if "| eta " in x]
    assert running and all(" steps/s | elapsed " in x for x in running)
    assert any("| loss " in x and "tokens/s " in x for x in running)
    read = [x for x in proc.stderr.splitlines() if x.startswith("[curate] read: ")]
    assert read and read[-1].startswith("[curate] read: 40 items") and "done" in read[-1]
    ops = [x for x in proc.stderr.splitlines() if x.startswith("[curate] filters[1] split: ")]
    assert ops[0].endswith("| started") and "| done | kept " in ops[-1]  # each op: a line in, a line out
    # generation is heard from while it runs, before any session has finished (not silence until a wave ends)
    sim = [x for x in proc.stderr.splitlines() if x.startswith("[sim] simulate: 0/2 sessions")]
    assert any("tokens generated " in x for x in sim), "\n".join(sim)
    stats = json.loads((tmp_path / "runs" / "pg" / "usergpt" / "stats.json").read_text())
    # the summary table keeps each row on one line, however long (the base model's path)
    row = next(x for x in proc.stdout.splitlines() if "base model ref" in x)
    assert stats["base_model_ref"] in row
