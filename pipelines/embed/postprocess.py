"""After pooling: L2-normalise, truncate to the Matryoshka dimension, normalise again.

Order matters and follows sentence-transformers' ``encode(truncate_dim=...)``: the stored vector is
``normalize(truncate(normalize(pooled)))``; the first normalisation does not change the direction of
the truncated prefix, so this equals ``normalize(truncate(pooled))``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["l2_normalize", "postprocess", "truncate_dimension"]


def l2_normalize(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, eps)


def truncate_dimension(vectors: np.ndarray, dimension: int) -> np.ndarray:
    """Keep the first ``dimension`` components (Matryoshka truncation)."""
    if dimension > vectors.shape[1]:
        raise ValueError(f"dimension {dimension} exceeds the model's {vectors.shape[1]}")
    return vectors[:, :dimension]


def postprocess(vectors: np.ndarray, dimension: int, normalize: bool = True) -> np.ndarray:
    """Pooled float vectors to what is stored: float32, truncated, unit length when ``normalize``."""
    out = vectors.astype(np.float32, copy=False)
    if normalize:
        out = l2_normalize(out)
    if dimension != out.shape[1]:
        out = truncate_dimension(out, dimension)
        if normalize:
            out = l2_normalize(out)
    return np.ascontiguousarray(out)
