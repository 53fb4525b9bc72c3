"""Run folders, manifests and atomic outputs.

Layout: ``<run_root>/<recipe-name>/<step>/``. A step's output appears in one ``rename`` from a
temporary sibling folder, and only after ``manifest.json`` (its fingerprint) was written inside it, so
a crash or Ctrl-C leaves either the previous complete output or nothing; never a half-written folder
that a later run would take for done (:func:`realchat.files.atomic_folder`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from realchat.files import atomic_folder, read_json

MANIFEST = "manifest.json"
STATS = "stats.json"
RECIPE_COPY = "recipe.yaml"


def recipe_dir(run_root: Path, recipe_name: str) -> Path:
    return run_root / recipe_name


def step_dir(run_root: Path, recipe_name: str, step: str) -> Path:
    return run_root / recipe_name / step


def work_dir(run_root: Path, recipe_name: str, step: str, fingerprint: str) -> Path:
    """Checkpoints and part files of ``step`` at ``fingerprint`` that a rerun resumes from
    (``build --force`` removes it first, so the step starts clean)."""
    return run_root / recipe_name / ".work" / f"{step}-{fingerprint[:16]}"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    m = read_json(folder / MANIFEST)
    return m if isinstance(m, dict) else None


def read_stats(folder: Path) -> dict[str, Any]:
    """A finished step's ``stats.json`` ({} when it has none)."""
    s = read_json(folder / STATS)
    return s if isinstance(s, dict) else {}


def is_done(folder: Path, fp: str) -> bool:
    m = read_manifest(folder)
    return m is not None and m.get("fingerprint") == fp


@contextmanager
def atomic_output(folder: Path) -> Iterator[Path]:
    """A step's output folder, replaced in one rename once ``manifest.json`` is written in it."""
    with atomic_folder(folder) as tmp:
        yield tmp
        if not (tmp / MANIFEST).exists():
            raise RuntimeError(f"step wrote no {MANIFEST}; refusing to publish {folder}")
