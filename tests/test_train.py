"""The sft step on a tiny model built from a config: the loss mask, learning, reload, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from realchat.training.chat_format import as_user_simulator, decode_loss_tokens, tokenize_with_mask
from realchat.cli import app

runner = CliRunner()

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Write a Python function that sorts a list."},
    {"role": "assistant", "content": "Use sorted(xs)."},
    {"role": "user", "content": "Hello, how are you today?"},
    {"role": "assistant", "content": "I am fine, thank you."},
]


@pytest.mark.parametrize("role", ["user", "assistant"])
def test_loss_mask_decodes_to_exactly_the_turns_of_the_role(role, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    row = tokenize_with_mask(tok, CONV, role)
    assert len(row["input_ids"]) == len(row["assistant_masks"])
    expected = [m["content"] + "<|im_end|>\n" for m in CONV if m["role"] == role]
    assert decode_loss_tokens(tok, row) == expected


def test_user_simulator_view_swaps_system_prompt_and_adds_end_marker(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    msgs = as_user_simulator(CONV, "You write the human's turns.", "<|endconversation|>")
    assert msgs[0] == {"role": "system", "content": "You write the human's turns."}
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    runs = decode_loss_tokens(tok, tokenize_with_mask(tok, msgs, "user"))
    assert runs[-1] == "<|endconversation|><|im_end|>\n" and "Be brief." not in "".join(runs)


@pytest.fixture
def train_recipe(make_recipe, write_json_array, sharegpt_records, tiny_model_dir, tmp_path):
    def make(**train) -> Path:
        src = write_json_array(sharegpt_records[:80])
        path = make_recipe(src, filters=[{"op": "shape"}, {"op": "split", "max_tokens": 256}], name="tr")
        doc = yaml.safe_load(path.read_text())
        doc["steps"]["usergpt"] = {
            "kind": "sft", "loss_on": "user", "base_model": str(tiny_model_dir), "dataset": "curate",
            "max_length": 256, "max_steps": 6,
            "per_device_train_batch_size": 2, "learning_rate": 5e-3, "warmup_ratio": 0.0,
            "lr_scheduler_type": "constant", "save_steps": 2, "eval_share": 0.1, "eval_steps": 3,
            "end_marker": "<|endconversation|>", **train,
        }
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make


def test_usergpt_learns_saves_reloads_generates_and_publishes(train_recipe, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = train_recipe()
    result = runner.invoke(app, ["build", str(recipe), "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "tr" / "usergpt"
    stats = json.loads((out / "stats.json").read_text())
    train_losses = [r["train_loss"] for r in stats["losses"] if "train_loss" in r]
    assert stats["steps"] == 6 and len(train_losses) == 6
    assert train_losses[-1] < train_losses[0]  # a few optimisation steps lower the loss
    assert stats["eval_loss"] is not None and stats["dataset_loss_tokens"] < stats["dataset_tokens"]
    assert (out / "loss.png").stat().st_size > 1000
    assert not (tmp_path / "runs" / "tr" / ".work").exists() or not any((tmp_path / "runs" / "tr" / ".work").iterdir())

    published = tmp_path / "hub" / "realchat" / "tr-usergpt"  # models: <root>/<ns>/<recipe>-<step>
    model = AutoModelForCausalLM.from_pretrained(published)
    tok = AutoTokenizer.from_pretrained(published)
    assert tok.chat_template and (published / "generation_config.json").exists()
    ids = tok.apply_chat_template([{"role": "system", "content": stats["system_prompt"]}], return_tensors="pt",
                                  return_dict=True)
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]

    from huggingface_hub import ModelCard

    card = ModelCard.load(published / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    parents = {p["key"]: p for p in meta["realchat"]["parents"]}
    assert set(parents) == {"base_model", "dataset"}  # all parents: the data step and the base model
    assert parents["dataset"]["step"] == "curate"
    assert parents["dataset"]["repo"] == "realchat/tr-curate"  # parent by published repo id
    assert parents["base_model"]["role"] == "model" and "step" not in parents["base_model"]
    assert "| step | train loss | eval loss |" in card.text and "loss.png" in card.text
    from realchat.hub.publish import follow_lineage

    nodes = follow_lineage(str(published))
    assert nodes[0]["step"] == "usergpt" and nodes[0]["kind"] == "sft" and nodes[0]["depth"] == 0
    below = [(n["depth"], n["step"], n["kind"]) for n in nodes[1:]]
    curate = below.index((1, "curate", "curate"))
    # depth first: curate's own inputs (its source file and its tokenizer) right below it
    assert sorted(below[curate + 1 : curate + 3]) == [(2, None, "model"), (2, None, "source")]
    assert (1, None, "model") in below and len(below) == 4  # + usergpt's base model


def test_interrupted_training_resumes_from_checkpoint(train_recipe, tmp_path):
    from transformers import TrainerCallback

    from realchat.engine.build import build_step, graph_of, plan
    from realchat.engine.context import StepContext
    from realchat.recipe.load import load_recipe
    from realchat.steps import registry

    recipe = train_recipe()
    assert runner.invoke(app, ["build", str(recipe), "--only", "curate", "--no-progress"]).exit_code == 0
    loaded = load_recipe(recipe)
    graph = graph_of(loaded)
    plans = plan(loaded, graph)
    p = [x for x in plans if x.name == "usergpt"][0]

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise KeyboardInterrupt

    sft = registry.get("sft")
    original = sft.run
    try:
        sft.run = lambda ctx, out, **k: original(ctx, out, callbacks=[Interrupt()])
        with pytest.raises(KeyboardInterrupt):
            build_step(loaded, graph, p, StepContext(loaded, p.node, p.fingerprint, show_progress=False))
    finally:
        del sft.run  # back to the class's method
    assert not (p.output / "manifest.json").exists()  # nothing half-written
    result = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
    assert result.exit_code == 0, result.output
    stats = json.loads((p.output / "stats.json").read_text())
    assert stats["resumed_from"].endswith("checkpoint-2") and stats["steps"] == 6


def test_train_errors(train_recipe, tmp_path, write_json_array):
    def invoke(recipe):
        r = runner.invoke(app, ["build", str(recipe), "--no-progress", "--no-push"])
        return r.exit_code, " ".join(r.output.split())

    bad_model = train_recipe(base_model=str(tmp_path / "nope"))
    code, out = invoke(bad_model)
    assert code == 2 and "model not found" in out and "steps.usergpt.base_model" in out

    too_short = train_recipe(max_length=8)
    code, out = invoke(too_short)
    assert code == 2 and "smaller than one turn" in out

    only_gpt = write_json_array([{"id": f"x{i}", "conversations": [{"from": "gpt", "value": "hi there"}]}
                                 for i in range(5)], name="gpt.json")
    no_user = train_recipe(dataset={"path": str(only_gpt), "format": "sharegpt"})
    code, out = invoke(no_user)
    assert code == 2 and "no user turns to train on" in out and "Traceback" not in out


def test_packed_micro_batches_are_single_rows_without_varlen_attention():
    from realchat.training.trainer import micro_batches

    # SDPA/eager (CPU): one packed row per forward pass, the batch made up by accumulation
    assert micro_batches(True, 4, 2, "sdpa") == (1, 8)
    # flash-attention keeps packed documents apart in one flattened sequence: batch as written
    assert micro_batches(True, 4, 2, "flash_attention_2") == (4, 2)
    assert micro_batches(False, 4, 2, "sdpa") == (4, 2)


def test_tensorboard_event_files_are_kept_with_the_model(train_recipe, tmp_path):
    """``report_to: tensorboard``: the event files land in the step's output (``logs/``) and are
    published with the model, not in the work folder that is removed once the step is done. No logged
    training loss is 0 (rows without a loss token were left out before training)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = train_recipe(report_to="tensorboard")
    result = runner.invoke(app, ["build", str(recipe), "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "tr" / "usergpt"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tensorboard_logs"] == "logs"
    events = sorted((out / "logs").rglob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in out.iterdir())
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert len(losses) == stats["steps"] and all(v > 0 for v in losses)
    assert list((tmp_path / "hub" / "realchat" / "tr-usergpt" / "logs").rglob("events.out.tfevents.*"))
    assert all(r["train_loss"] > 0 for r in stats["losses"] if "train_loss" in r)


def test_rows_without_a_loss_token_within_max_length_are_left_out_and_counted(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    from realchat.training.trainer import tokenize_conversations

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    late = [{"role": "system", "content": "word " * 200}, *CONV[1:]]  # its first user turn starts past 64 tokens
    no_user = [CONV[0], CONV[2]]
    dropped: dict[str, int] = {}
    rows = tokenize_conversations(tok, [CONV, late, no_user], "user", 64, "training data", dropped)
    assert len(rows) == 1 and dropped == {"no_loss_turn": 1, "loss_cut_by_max_length": 1}
    assert all(any(r["assistant_masks"][:64]) for r in rows)  # every row kept has something to learn


def test_a_build_into_a_job_log_has_no_carriage_returns_nor_endless_lines(train_recipe, tmp_path):
    """stdout and stderr to a file (a job log): no library's ``\\r`` progress bar, no line longer than
    the cap, and RealChat's own progress still says what moved."""
    import os
    import subprocess
    import sys

    from realchat.progress import LOG_LINE_CHARS

    recipe = train_recipe(max_steps=2, eval_steps=1)
    log = tmp_path / "job.log"
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    with log.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "realchat.cli", "build", str(recipe), "--no-push"],
                           stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=600)
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    assert "\r" not in text
    assert max(len(line) for line in text.splitlines()) <= LOG_LINE_CHARS + 40
    assert "step usergpt" in text and "train:" in text  # RealChat's own lines are there


def test_long_library_log_lines_are_cut():
    import logging

    from realchat.progress import LOG_LINE_CHARS, quiet_libraries

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    quiet_libraries()
    logger = logging.getLogger("transformers")
    keep = Keep()
    logger.addHandler(keep)
    try:
        logger.warning("x" * 9_000)
    finally:
        logger.removeHandler(keep)
    assert len(keep.messages[-1]) < LOG_LINE_CHARS + 40 and "7,000 more characters" in keep.messages[-1]
