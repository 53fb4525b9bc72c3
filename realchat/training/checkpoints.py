"""Which training checkpoints a rerun may resume from.

The Trainer writes a ``checkpoint-N`` folder file by file: the weights, then the optimizer,
scheduler and RNG state, and ``trainer_state.json`` **last**. A kill -9 or a full disk in between
leaves a folder with only some of them, and handing that folder to ``resume_from_checkpoint`` fails
on every rerun ("Can't find a valid checkpoint"). So a checkpoint counts as complete only when

* ``trainer_state.json`` parses and its ``global_step`` is the folder's N (it is written last, so
  its presence says the files before it were written whole),
* the weights are there, in one of the layouts the trainer, accelerate and DeepSpeed write, and
* the optimizer state is there, likewise.

Per launch, what holds the weights and the optimizer state in a ``checkpoint-N`` folder (file names
are accelerate 1.16's ``save_fsdp_model`` / ``save_fsdp_optimizer`` and DeepSpeed's
``save_checkpoint``; ``{i}`` is the model or optimizer index, ``{r}`` the rank)::

    one process, DDP     model.safetensors (or an index, adapter_model.*)   optimizer.pt
    FSDP, full           pytorch_model_fsdp.bin (+ model.safetensors)        optimizer.bin
    FSDP, sharded (DCP)  pytorch_model_fsdp_{i}/.metadata                    optimizer_{i}/.metadata
    FSDP, local (FSDP1)  pytorch_model_fsdp_rank{r}.bin                      optimizer_{i}_rank{r}.bin
    DeepSpeed            global_step{N}/*model_states.pt                     global_step{N}/*optim_states.pt

The folders of a distributed checkpoint (``torch.distributed.checkpoint``: FSDP's sharded state dict)
count only with their ``.metadata`` file, which the coordinator writes after every rank wrote its
shards; a DeepSpeed ``global_step*`` folder only with both its model and optimizer state files.

A torn checkpoint is moved out of the way and removed (the work folder is the step's own, and the
run lock keeps other builds out), so the Trainer's own rotation never keeps it as the "newest".
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from realchat.errors import RealChatError

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
#: Weight files of a one-process or DDP checkpoint (``Trainer.save_model``), and of an FSDP one with a
#: full state dict (which also gets accelerate's ``pytorch_model_fsdp.bin``).
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
           "adapter_model.bin", "pytorch_model.bin", "pytorch_model.bin.index.json")
_FSDP_WEIGHTS = re.compile(r"pytorch_model_fsdp(_\d+)?(_rank\d+)?\.bin")
_FSDP_WEIGHTS_DCP = re.compile(r"pytorch_model_fsdp_\d+")
_OPTIMIZER_FILE = re.compile(r"optimizer(_\d+)?(_rank\d+)?\.(pt|bin)")
_OPTIMIZER_DCP = re.compile(r"optimizer_\d+")
_DEEPSPEED = re.compile(r"global_step\d+")
#: What ``torch.distributed.checkpoint`` writes last, once every rank's shards are written.
DCP_METADATA = ".metadata"
TRAINER_STATE = "trainer_state.json"


def _non_empty(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def _dcp_complete(folder: Path) -> bool:
    return folder.is_dir() and _non_empty(folder / DCP_METADATA)


def _deepspeed_has(folder: Path, suffix: str) -> bool:
    return folder.is_dir() and any(_non_empty(f) for f in folder.glob(f"*{suffix}"))


def has_weights(folder: Path) -> bool:
    """The model's weights are in ``folder`` in one of the layouts above."""
    for p in folder.iterdir():
        if p.name in WEIGHTS or _FSDP_WEIGHTS.fullmatch(p.name):
            if _non_empty(p):
                return True
        elif _FSDP_WEIGHTS_DCP.fullmatch(p.name):
            if _dcp_complete(p):
                return True
        elif _DEEPSPEED.fullmatch(p.name) and _deepspeed_has(p, "model_states.pt"):
            return True
    return False


def has_optimizer(folder: Path) -> bool:
    """The optimizer state is in ``folder`` in one of the layouts above."""
    for p in folder.iterdir():
        if _OPTIMIZER_FILE.fullmatch(p.name):
            if _non_empty(p):
                return True
        elif _OPTIMIZER_DCP.fullmatch(p.name):
            if _dcp_complete(p):
                return True
        elif _DEEPSPEED.fullmatch(p.name) and _deepspeed_has(p, "optim_states.pt"):
            return True
    return False


def why_incomplete(folder: Path) -> str | None:
    """None if ``folder`` is a complete checkpoint, else what is missing or broken."""
    m = _CHECKPOINT.fullmatch(folder.name)
    if m is None or not folder.is_dir():
        return "not a checkpoint folder"
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError) as e:
        return f"{TRAINER_STATE} unreadable ({type(e).__name__})"
    if not isinstance(state, dict) or state.get("global_step") != int(m[1]):
        return f"{TRAINER_STATE} is not for step {m[1]}"
    if not has_weights(folder):
        return "no model weights"
    if not has_optimizer(folder):
        return "no optimizer state"
    return None


def checkpoints(folder: Path) -> list[Path]:
    """``checkpoint-N`` folders below ``folder``, oldest (smallest N) first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CHECKPOINT.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def newest_complete(folder: Path, log=None) -> Path | None:
    """The newest complete checkpoint below ``folder``; torn ones are removed (and said so)."""
    best = None
    for ck in reversed(checkpoints(folder)):
        why = why_incomplete(ck)
        if why is None:
            best = best or ck
            continue
        if log:
            log(f"dropping torn checkpoint {ck} ({why})")
        trash = ck.with_name(f".torn-{ck.name}-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(ck, trash)  # one rename: never half-removed under its checkpoint name
        except FileNotFoundError:  # another rank of a multi-process launch moved it first
            continue
        shutil.rmtree(trash, ignore_errors=True)
    return best


def save_failure(e: BaseException, folder: Path) -> RealChatError | None:
    """A one-line error when ``e`` broke off the writing of a checkpoint (a full disk: torch and
    safetensors report it as a RuntimeError or an OSError), else None.

    Torn checkpoints are dropped before training starts, so a torn newest one after a failure was
    being written by this run."""
    cks = checkpoints(folder)
    if not cks or why_incomplete(cks[-1]) is None:
        return None
    cause = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or [type(e).__name__])[0]
    try:
        free = f"; {shutil.disk_usage(folder).free / 1e9:.1f} GB free there now"
    except OSError:
        free = ""
    return RealChatError(f"writing training checkpoint {cks[-1]} failed ({type(e).__name__}: {cause[:200]}){free}",
                         hint="free some disk space and build again: training resumes from the newest complete "
                              "checkpoint, and this torn one is dropped")


@contextmanager
def checkpoint_faults(work: Path, log: Any = None) -> Iterator[None]:
    """Around a training run in the work folder ``work`` (checkpoints in ``work/checkpoints``): torn
    checkpoints are dropped first (and said so), and a failure that leaves the checkpoint being
    written torn (a full disk) becomes :func:`save_failure`'s one-line error."""
    folder = work / "checkpoints"
    newest_complete(folder, log=log)
    try:
        yield
    except (RuntimeError, OSError) as e:
        err = save_failure(e, folder)
        if err is None:
            raise
        raise err from e
