"""Where a recipe's curation runs: in this process (``local``) or on a Ray cluster (``ray``).

The executor is a property of the *build*, not of the data: both give the same kept rows and the same
rejection reasons, so it is not part of any step's fingerprint, and ``--set executor.kind=ray``
switches a recipe without invalidating what is built.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from realchat.recipe.base import Strict


class ExecutorConfig(Strict):
    """``{kind: local}`` (default) or ``{kind: ray, address: …, num_cpus: …}``."""

    #: `local`: this process; `ray`: the curate step on Ray (a runtime started here, or `address`).
    kind: Literal["local", "ray"] = "local"
    #: Ray only. ``null``: start a Ray runtime on this machine for the build (and stop it after);
    #: ``"auto"``: join the cluster this machine is part of (``ray start --head`` ran here);
    #: ``"ray://host:10001"``: a remote cluster through Ray Client. RealChat must be installed on its nodes.
    address: str | None = None
    #: Ray only, for a runtime started here: the CPUs it may use (default: all).
    num_cpus: int | None = Field(None, ge=1)
    #: Local only: processes for the per-conversation ops (the dedup ops stay in the main process);
    #: ``null``: one per CPU. They start only once the input has shown more than 4 shards (small inputs
    #: run in this process: starting workers costs seconds).
    workers: int | None = Field(None, ge=1)
    #: Conversations per shard: the chunk the local executor streams (its memory bound) and the unit
    #: Ray schedules (one task per shard).
    shard_rows: int = Field(5_000, ge=1)
