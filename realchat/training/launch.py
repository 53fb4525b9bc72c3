"""Multi-GPU training keys against how the build was launched.

``fsdp:`` and ``deepspeed:`` shard a model over the processes of a launch (``torchrun``,
``accelerate launch``). In a plain one-process ``realchat build`` there is nothing to shard over:
transformers would quietly train without FSDP (a 7B model that then does not fit) or set up
DeepSpeed for one process. So such a run stops at build time, before any step starts, with the
command that launches it as meant.
"""

from __future__ import annotations

from realchat.errors import RecipeError


def launch_command(recipe: str = "<recipe.yaml>") -> str:
    """The launch that runs every sft step of ``recipe`` on N processes (one per GPU)."""
    return f"torchrun --nproc_per_node N -m realchat.cli build {recipe}"


def check_launch(fsdp: str | None, deepspeed: str | None, world_size: int, recipe: str = "<recipe.yaml>") -> None:
    """Raise when a sharding key is set but this build runs as one process (``WORLD_SIZE`` unset or 1)."""
    if world_size > 1:
        return
    for key, value in (("fsdp", fsdp), ("deepspeed", deepspeed)):
        if value:
            raise RecipeError(
                f"{key}: {value!r} shards training over the processes of a multi-GPU launch, and this "
                "build runs as one process",
                field=key,
                hint=f"launch it on N GPUs: {launch_command(recipe)} (or accelerate launch --num_processes N "
                     f"-m realchat.cli build {recipe}); on one GPU, remove {key}:")
