"""TRL's own config names in a recipe: the ``trl:`` mapping of an sft step.

Anything TRL's ``SFTConfig`` (and the transformers ``TrainingArguments`` it extends) takes can be set
under ``trl:`` (``optim: adamw_torch_fused``, ``use_liger_kernel: true``, ``torch_compile: true``,
``dataloader_num_workers: 4``, ``neftune_noise_alpha: 5``…); it is handed to ``SFTConfig`` as written
and overrides what RealChat would pass. The keys are checked against ``SFTConfig``'s fields before
anything runs (plan time): an unknown key is an exit-2 error naming ``steps.<step>.trl.<key>`` with a
did-you-mean. Two kinds of keys are refused with a pointer instead of passed through:

* keys the step has itself (``max_length``, ``learning_rate``, ``bf16``, ``report_to``…): one value,
  one place, so ``steps.<step>.<key>`` is the only way to set them;
* keys RealChat owns: where checkpoints go (the step's work folder, which makes resuming work), the
  seed (the recipe's), and pushing to the Hub (the engine publishes with the lineage).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from realchat.errors import RecipeError

#: SFTConfig fields RealChat sets from elsewhere and never takes from ``trl:``, and why.
OWNED: dict[str, str] = {
    "output_dir": "checkpoints go to the step's work folder (resuming depends on it)",
    "overwrite_output_dir": "checkpoints go to the step's work folder (resuming depends on it)",
    "resume_from_checkpoint": "an interrupted step resumes from its last checkpoint by itself",
    "seed": "the recipe's top-level seed is used",
    "data_seed": "the recipe's top-level seed is used",
    "push_to_hub": "the engine publishes the step with its card and lineage (publish: in the recipe)",
    "hub_model_id": "the engine publishes the step with its card and lineage (publish: in the recipe)",
    "hub_token": "the engine publishes the step with its card and lineage (publish: in the recipe)",
    "hub_strategy": "the engine publishes the step with its card and lineage (publish: in the recipe)",
    "hub_private_repo": "the engine publishes the step with its card and lineage (publish: in the recipe)",
    "include_num_input_tokens_seen": "the step's throughput figures count the tokens trained on, padding excluded",
}


@lru_cache(maxsize=1)
def sft_config_fields() -> frozenset[str]:
    """The names ``trl.SFTConfig`` accepts (its dataclass fields, TrainingArguments' included)."""
    import dataclasses

    from trl import SFTConfig

    return frozenset(f.name for f in dataclasses.fields(SFTConfig) if f.init)


def check_trl_options(options: Mapping[str, Any], step_keys: Iterable[str],
                      fields: frozenset[str] | None = None) -> None:
    """Refuse unknown, step-owned and RealChat-owned keys of a ``trl:`` mapping (``field`` is
    ``trl.<key>``, relative to the step; the engine adds the file and the step's key path)."""
    if not options:
        return
    known = fields if fields is not None else sft_config_fields()
    own = set(step_keys)
    for key in options:
        if key in own:
            raise RecipeError(f"'{key}' is a key of the step itself: set it there, not under trl",
                              field=f"trl.{key}", hint=f"move it up one level: {key}: {options[key]!r}")
        if key in OWNED:
            raise RecipeError(f"'{key}' is set by RealChat: {OWNED[key]}", field=f"trl.{key}")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known | own), n=1, cutoff=0.6)
            hint = (f"did you mean '{close[0]}'?" if close else None)
            raise RecipeError("unknown key: not a field of TRL's SFTConfig" + (f"; {hint}" if hint else ""),
                              field=f"trl.{key}",
                              hint="any field of trl.SFTConfig / transformers.TrainingArguments may be set here")
