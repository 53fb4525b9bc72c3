"""Plan-time checks of a local model folder: what ``from_pretrained`` would trip over minutes later.

A folder with a ``config.json`` passes for a model until something loads it: a folder without any
tokenizer file, or a ``.safetensors`` file cut short (a copy or download that stopped), used to fail
deep inside transformers or safetensors with a traceback, after the steps before it ran. Both are
cheap to see at plan time: a tokenizer is one of a few file names, and a safetensors file says in its
header (8 bytes of length, then JSON) where every tensor's bytes end, so the file's length tells
whether they are all there, without reading a weight.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

#: Files any of which lets ``AutoTokenizer`` load a tokenizer from the folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tekken.json")
#: A header larger than this is not a safetensors header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000


def model_folder_problem(folder: Path) -> str | None:
    """Why a model folder (one with ``config.json``) cannot be loaded, or None: no tokenizer file, a
    weight shard its index names that is missing, or a safetensors file shorter than its header says."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return (f"no tokenizer in the model folder (none of {', '.join(TOKENIZER_FILES)}): "
                "save the tokenizer beside the weights (tokenizer.save_pretrained(folder))")
    index = folder / "model.safetensors.index.json"
    shards = sorted(folder.glob("*.safetensors"))
    if index.is_file():
        try:
            names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{index.name}: not a safetensors index ({type(e).__name__})"
        missing = sorted(n for n in names if not (folder / n).is_file())
        if missing:
            return f"{index.name} names weight files that are not there: {', '.join(missing[:3])}"
    for shard in shards:
        problem = safetensors_problem(shard)
        if problem:
            return f"{shard.name}: {problem}"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (None when its header parses and its data is all
    there). Reads the header only."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated: {size} bytes, not even a header"
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER or 8 + length > size:
            return f"truncated or not safetensors: the header claims {length:,} bytes, the file has {size:,}"
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            return "not safetensors: the header is not JSON"
    if not isinstance(header, dict):
        return "not safetensors: the header is not a JSON object"
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"truncated: its tensors need {needed:,} bytes, the file has {size:,} (an interrupted copy or download?)"
    return None
