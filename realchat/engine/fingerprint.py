"""Fingerprints: what makes a step's output what it is, hashed.

A step's fingerprint hashes its kind, its resolved config, the package version and, for every input,
either the parent step's fingerprint or the content identity of the file, folder or Hub id it names
(sha256 of the bytes, so fingerprints agree across machines and virtual environments). Parents chain:
changing a step changes its fingerprint and every fingerprint downstream of it, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from realchat import __version__
from realchat.engine.graph import Edge, Node
from realchat.recipe.refs import FileData, HubData


def fingerprint(kind: str, config: dict[str, Any], inputs: list[Any]) -> str:
    payload = json.dumps({"kind": kind, "config": config, "inputs": inputs, "realchat": __version__},
                         sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def external_identity(edge: Edge, base_dir: Path) -> dict[str, Any]:
    """What an input that is not a step contributes: its content digest, or the Hub id and revision."""
    from realchat.models import model_identity

    if edge.role == "dataset":
        if isinstance(edge.data, HubData):
            return {"hub": edge.data.hub, "revision": edge.data.revision, "split": edge.data.split}
        assert isinstance(edge.data, FileData)
        return {**model_identity(edge.data.path, base_dir), "format": edge.data.format}
    return model_identity(str(edge.value), base_dir)


def input_identities(node: Node, parent_fps: dict[str, str], base_dir: Path) -> dict[str, Any]:
    """Every input of ``node`` by its key: a parent by its fingerprint, anything else by its content."""
    return {e.key: {"step_fingerprint": parent_fps[e.step]} if e.step else external_identity(e, base_dir)
            for e in node.inputs}


def input_parts(identities: dict[str, Any], extra: list[Any]) -> list[Any]:
    """What the fingerprint hashes of the inputs: (key, identity) pairs, then the kind's extra inputs."""
    return [[key, ident] for key, ident in identities.items()] + [[x.get("key", "extra"), x] for x in extra]
