"""Model-name rules and vector rows, the same in every part (the default model id: embed_common/settings.py)."""

from __future__ import annotations

import numpy as np


def short_name(model_id: str) -> str:
    """The comparable name of a model id or local path (the seed's ``model``): its last path component."""
    return model_id.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
