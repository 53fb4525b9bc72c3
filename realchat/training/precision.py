"""Which numeric precision a training run uses: one pure rule, :func:`choose_precision`.

Three ways to train, as a recipe names them with ``precision:``:

* ``bf16-mixed`` (what ``auto`` picks on a GPU with bf16): the model is loaded in float32, so the
  weights the optimiser updates ("master weights"), their gradients and AdamW's two moments are
  float32; the matrix multiplies run in bf16 under autocast (``TrainingArguments(bf16=True)`` →
  accelerate's ``torch.autocast``; under FSDP, its ``MixedPrecisionPolicy`` with bf16 parameters for
  compute, float32 shards). Memory: 4 + 4 + 8 = 16 bytes a parameter before activations.
* ``bf16-pure``: the model is loaded in bf16 and everything (weights, gradients, Adam moments) is bf16:
  8 bytes a parameter, but an update smaller than 1/256 of a weight rounds away (bf16 keeps 8
  significant bits): at a learning rate of 2e-5 most small updates vanish, norm weights close to 1.0
  never move. Only for memory-bound runs that accept it.
* ``fp32``: everything float32, no autocast (CPUs, GPUs without bf16; slowest on tensor cores).

Whatever trained, a model trained with bf16 compute is *saved* in bf16 (half the disk, what vLLM and
the Hub expect for such a model); an fp32 run is saved in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from realchat.errors import RealChatError

#: ``precision:`` as a recipe writes it.
PrecisionSetting = Literal["auto", "bf16-mixed", "bf16-pure", "fp32"]
#: The older ``bf16:`` key's values (kept for existing recipes).
Bf16Setting = bool | Literal["auto", "yes", "no"]


@dataclass(frozen=True)
class Precision:
    """What :func:`choose_precision` decided (recorded in the step's stats)."""

    #: ``bf16-mixed``, ``bf16-pure`` or ``fp32``.
    name: str
    #: The dtype the model is loaded (and its master weights kept) in: ``float32`` or ``bfloat16``.
    load_dtype: str
    #: ``TrainingArguments(bf16=...)``: autocast compute in bf16 (mixed), or bf16 AMP over bf16 weights (pure).
    bf16_compute: bool
    #: The dtype the trained model is saved in.
    save_dtype: str


def choose_precision(precision: PrecisionSetting, bf16: Bf16Setting, *, device_type: str,
                     bf16_available: bool) -> Precision:
    """The run's precision from the recipe's ``precision:`` and the older ``bf16:`` key, and the machine.

    Pure: the caller says whether this is CUDA with bf16 (``torch.cuda.is_bf16_supported()``), so the
    rule is tested without a GPU. ``bf16: false`` is ``fp32``, ``bf16: true`` is ``bf16-mixed``
    (an error without a bf16 GPU, as before); set together with a different ``precision:`` they
    contradict each other, which is an error rather than a guess. On a CPU, ``auto`` is ``fp32``.
    """
    legacy: PrecisionSetting = "auto"
    if bf16 in (False, "no"):
        legacy = "fp32"
    elif bf16 in (True, "yes"):
        legacy = "bf16-mixed"
    if precision != "auto" and legacy != "auto" and precision != legacy:
        raise RealChatError(f"precision: {precision} and bf16: {str(bf16).lower()} say different things",
                            field="precision", hint="keep precision: and drop bf16: (its older spelling)")
    wanted = precision if precision != "auto" else legacy
    has_bf16 = device_type == "cuda" and bf16_available
    if wanted == "auto":
        wanted = "bf16-mixed" if has_bf16 else "fp32"
    if wanted != "fp32" and not has_bf16:
        key = "precision" if precision != "auto" else "bf16"
        raise RealChatError(f"{key}: {precision if key == 'precision' else str(bf16).lower()} needs a GPU with "
                            "bf16, and this machine has none", field=key,
                            hint="precision: auto (bf16-mixed where a GPU has bf16, fp32 elsewhere)")
    if wanted == "bf16-pure":
        return Precision("bf16-pure", "bfloat16", True, "bfloat16")
    if wanted == "bf16-mixed":
        return Precision("bf16-mixed", "float32", True, "bfloat16")
    return Precision("fp32", "float32", False, "float32")
