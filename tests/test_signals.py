"""Stopping a build that has worker processes: SIGTERM (a job scheduler), Ctrl-C to the process group,
kill -9. Real builds in real subprocesses, real signals: one message and the signal's exit code, no
traceback, nothing half-written and no process left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def long_curate(sharegpt_records, tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A curate recipe over 18,000 shipped conversations in chunks of 40, two worker processes: the
    workers start after four chunks and are busy for longer than the tests wait, on a quiet machine too
    (6,000 could finish right as SIGTERM arrived, after the handler was gone: exit -15)."""
    folder = tmp_path_factory.mktemp("signals")
    data = folder / "many.jsonl"
    with data.open("w") as f:
        for k in range(30):
            for rec in sharegpt_records:
                f.write(json.dumps({**rec, "id": f"{rec.get('id')}-{k}"}, ensure_ascii=False) + "\n")
    doc = {"name": "sig", "executor": {"workers": 2, "shard_rows": 40},
           "steps": {"curate": {"kind": "curate", "source": {"format": "sharegpt", "path": str(data)},
                                "tokenizer": str(tiny_tokenizer_dir),
                                "filters": [{"op": "fix_unicode"}, {"op": "redact_pii"}, {"op": "clean_html"},
                                            {"op": "length", "min_chars": 1, "max_chars": 20000}]}}}
    recipe = folder / "sig.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    return recipe


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def build(tmp_path):
    """Start the build in its own session (a process group of its own), its output in files (a pipe
    would stay open as long as any worker lives); yield once its two workers and the resource
    tracker are running and the workers have had time to take chunks. Whatever outlives the test is
    killed after it."""
    started: list[set[int]] = []

    def start(recipe: Path, children: int = 3) -> tuple[subprocess.Popen, set[int], Path]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        err = tmp_path / "stderr.txt"
        proc = subprocess.Popen([sys.executable, "-m", "realchat.cli", "build", str(recipe), "--no-progress",
                                 "--no-push", "--set", f"run_root={tmp_path / 'runs'}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=err.open("w"), start_new_session=True)
        started.append({proc.pid})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_children(proc.pid)) < children and proc.poll() is None:
            time.sleep(0.1)
        kids = _children(proc.pid)
        started.append(kids)
        assert len(kids) >= children, f"no worker processes started: {proc.poll()} {err.read_text()}"
        time.sleep(4 if children > 2 else 1)  # the workers import their libraries and take chunks
        assert proc.poll() is None, "the build finished before it could be stopped"
        return proc, kids, err

    yield start
    for pid in set().union(*started):
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


def _left_running(kids: set[int]) -> set[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(k) for k in kids):
        time.sleep(0.2)
    return {k for k in kids if _running(k)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["sigterm", "sigint_group", "sigterm_group"])
def test_stop_is_one_message_an_exit_code_and_nothing_left(long_curate, build, tmp_path, how):
    proc, kids, stderr = build(long_curate)
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)  # what `kill PID` and most schedulers send to the job's process
    else:  # Ctrl-C in a terminal (and some schedulers) signal the whole process group, workers included
        os.killpg(proc.pid, signal.SIGINT if how == "sigint_group" else signal.SIGTERM)
    proc.wait(timeout=120)
    err = stderr.read_text()
    name = "SIGINT" if how == "sigint_group" else "SIGTERM"
    assert proc.returncode == (130 if name == "SIGINT" else 143), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [line for line in err.splitlines() if "interrupted" in line] == \
        [f"interrupted ({name}): nothing half-written was kept; rerun to resume"], err
    assert not _left_running(kids), "worker or resource-tracker processes outlived the build"
    step_folder = tmp_path / "runs" / "sig"
    assert not (step_folder / "curate").exists()  # no output claims to be finished
    assert not [p.name for p in step_folder.glob(".curate.*")]  # nor a temporary one left behind


@pytest.fixture(scope="module")
def language_curate(sharegpt_records, tmp_path_factory) -> Path:
    """Language ID on 24,000 shipped conversations in chunks of 6,000: no worker processes start (four
    chunks), so the main process sends each chunk to language ID's helper process."""
    folder = tmp_path_factory.mktemp("signals-language")
    data = folder / "many.jsonl"
    with data.open("w") as f:
        for k in range(40):
            for rec in sharegpt_records:  # each copy's turns made distinct (language ID predicts a turn once)
                turns = [{**t, "value": f"{t['value']} ({k})"} if isinstance(t.get("value"), str) else t
                         for t in rec.get("conversations") or []]
                f.write(json.dumps({**rec, "id": f"{rec.get('id')}-{k}", "conversations": turns},
                                   ensure_ascii=False) + "\n")
    doc = {"name": "lang", "executor": {"workers": 2, "shard_rows": 6000},
           "steps": {"curate": {"kind": "curate", "source": {"format": "sharegpt", "path": str(data)},
                                "filters": [{"op": "language", "max_chars": 100000}]}}}
    recipe = folder / "lang.yaml"
    recipe.write_text(yaml.safe_dump(doc, sort_keys=False))
    return recipe


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_language_ids_helper_process_too(language_curate, build, tmp_path):
    proc, kids, stderr = build(language_curate, children=2)  # the helper and the resource tracker
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    err = stderr.read_text()
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    assert not _left_running(kids), "language ID's helper outlived the build"
    assert not (tmp_path / "runs" / "lang" / "curate").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_build(long_curate, build):
    proc, kids, _ = build(long_curate)
    proc.send_signal(signal.SIGKILL)  # no handler runs: the kernel must take the workers down
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not _left_running(kids), "worker or resource-tracker processes outlived the killed build"


def test_stopping_workers_ends_even_when_one_died_half_way_through_its_answer():
    """A worker killed while writing its answer leaves half a message in the pool's answer pipe; the
    pool's reader thread then waits for the rest. Stopping must end anyway (a build that never exited
    on SIGTERM, one run in three on a loaded machine). Half a message is put there as a killed worker
    leaves it: a length header and fewer bytes than it announces."""
    import struct
    import threading

    from realchat.curation.local_executor import _Workers

    workers = _Workers(2, tokenizer=lambda: None)
    workers._start()
    deadline = time.monotonic() + 120
    while not workers._ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers._ready(), "the worker processes did not start"
    kids = {p.pid for p in workers.pool._processes.values()}
    writer = workers.pool._result_queue._writer  # the pipe the workers answer through
    os.write(writer.fileno(), struct.pack("!i", 1 << 20) + b"half an answer")
    time.sleep(0.5)  # the pool's reader thread takes the header and waits for the rest
    closing = threading.Thread(target=workers.close, kwargs={"stop": True}, daemon=True)
    closing.start()
    closing.join(timeout=60)
    assert not closing.is_alive(), "stopping the workers waited for the rest of a dead worker's answer"
    assert not _left_running(kids)


def test_a_signal_inside_a_native_librarys_callback_waits_until_the_code_has_left_it():
    """polars unwraps what its Python callbacks return: SIGTERM raised inside one (a dtype lookup, seen
    in this suite) was a Rust panic and an abort, not exit 143. Inside such code the handler sends the
    signal again a moment later instead; anywhere else it raises at once."""
    from realchat import interrupts

    seen: list[int] = []
    # code that reads as polars' own Python, as it runs when Rust calls back into it
    space: dict = {}
    exec(compile("import sys\ndef callback():\n    return sys._getframe()\n",
                 os.sep.join(["", "x", "polars", "datatypes", "_parse.py"]), "exec"), space)
    inside = space["callback"]()
    previous = signal.signal(signal.SIGUSR1, lambda *_: seen.append(signal.SIGUSR1))
    try:
        interrupts._raise_terminated(signal.SIGUSR1, inside)  # no exception: delivered again later
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGUSR1]
        with pytest.raises(interrupts.Terminated):
            interrupts._raise_terminated(signal.SIGTERM, sys._getframe())
        with pytest.raises(KeyboardInterrupt):
            interrupts._raise_interrupt(signal.SIGINT, sys._getframe())
    finally:
        signal.signal(signal.SIGUSR1, previous)
