"""Multi-process launches (``torchrun``, ``accelerate launch``): every rank trains, one rank writes.

A launch starts the same ``realchat build`` in N processes. Run naively, every process would build
every step, write the same output folder, publish it N times and sweep or replace the others'
temporary folders. Here:

* the **main process** (global rank 0) is the build of record: it alone takes the run folder's lock,
  decides what to build, writes outputs, cards and manifests, and publishes;
* every **other rank** takes no lock (it would wait forever for the main's, while the main waits for it
  inside training's collectives), follows the main's decision for each step (broadcast), joins the
  steps whose kind runs on every rank (``StepKind.every_rank``: training) into a scratch folder that is
  never published, and waits at a barrier until the main has written and published the step, so the
  next step reads a finished parent. It never calls :func:`realchat.files.atomic_folder`, so it never
  sweeps the main's temporary folders either (on other nodes the main's process id means nothing).

The process group is accelerate's (``PartialState``: NCCL on GPUs, gloo on CPUs), the one the trainer
uses afterwards, started with a long timeout: the other ranks wait at barriers while the main curates
or simulates, which can take hours. If the main fails, the launcher (torchrun's agent) stops the
others. A plain ``realchat build`` (no ``WORLD_SIZE``) never imports torch here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

#: How long the other ranks wait at a barrier for the main process to build a step that only it runs.
WAIT = timedelta(days=2)


def world_size() -> int:
    """Processes in this launch (``WORLD_SIZE``, set by torchrun and accelerate launch; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's global rank (``RANK``; 0 outside a launch)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def start() -> None:
    """Join the launch's process group (nothing outside a launch)."""
    if world_size() > 1:
        import torch
        from accelerate import PartialState

        # cpu: without it accelerate sees no distributed setup on a machine with no GPU (gloo)
        PartialState(cpu=not torch.cuda.is_available(), timeout=WAIT)


def share(value: Any) -> Any:
    """The main process's ``value`` on every rank (the others pass anything)."""
    if world_size() <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank is here (after the main has written and published a step)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


@contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first, the others after it (preparing a shared cache, such as
    de-quantising a GGUF model once, instead of N processes racing to write the same folder)."""
    if world_size() <= 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield
