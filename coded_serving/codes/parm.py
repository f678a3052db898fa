"""ParM: learned parity models (Kosaian et al., SOSP 2019)."""

from __future__ import annotations

import numpy as np

from .base import Code


class _ParM(Code):
    """ParM: k data workers and one parity worker running a learned parity model.

    The parity model is trained so that F_P(encode(x)) ~ sum_i F(x_i); a single missing
    output is then F_P(P) - sum_{i != j} F(x_i) (the subtraction decoder).
    """

    systematic = True
    learned_parity = True

    def __init__(self, k: int):
        if k < 2:
            raise ValueError(f"ParM needs k >= 2, got {k}")
        self.k = k
        self.num_workers = k + 1

    subtraction_weight = 1.0

    @property
    def min_available(self) -> int:
        return self.k

    def decode(self, results: np.ndarray, available: np.ndarray) -> np.ndarray:
        results, available = self._check_results(results, available)
        return subtraction_decode(results, available, self.k, parity_weight=self.subtraction_weight)


def subtraction_decode(results: np.ndarray, available: np.ndarray, k: int, parity_weight: float) -> np.ndarray:
    """The single missing data output j of each group: parity_weight * parity - sum_{i != j} outputs.

    ParM's parity is the sum of the k outputs (weight 1); Coded-InvNet's backup feature is their mean (weight k).
    """
    data, parity = results[:, :k], results[:, k]
    estimates = data.copy()
    missing = np.flatnonzero(~available[:k])
    if missing.size:
        (j,) = missing
        estimates[:, j] = parity_weight * parity - np.delete(data, j, axis=1).sum(axis=1)
    return estimates


class ParMAddition(_ParM):
    """Addition encoder: the parity query is the element-wise sum of the k queries."""

    native_encoder = "sum"

    def encode(self, queries: np.ndarray) -> np.ndarray:
        return self._check_queries(queries).sum(axis=1, keepdims=True)


class ParMConcatenation(_ParM):
    """Image-concatenation encoder (k = 2 or 4) for [C, H, W] queries.

    k=2: each image average-pooled to H x W/2, side by side; k=4: each to H/2 x W/2, one per
    quadrant (row-major). Pooling is per channel, so colour channels are never mixed.
    """

    def __init__(self, k: int):
        if k not in (2, 4):
            raise ValueError(f"the concatenation encoder supports k = 2 or 4, got {k}")
        super().__init__(k)

    def encode(self, queries: np.ndarray) -> np.ndarray:
        queries = self._check_queries(queries)
        if queries.ndim != 5:
            raise ValueError(f"the concatenation encoder needs image queries [groups, k, C, H, W], got {list(queries.shape)}")
        groups, k, channels, height, width = queries.shape
        if width % 2 or (k == 4 and height % 2):
            raise ValueError(f"image size {height}x{width} is not divisible for k={k}")
        if k == 2:
            pooled = queries.reshape(groups, 2, channels, height, width // 2, 2).mean(axis=-1)
            tiled = np.concatenate([pooled[:, 0], pooled[:, 1]], axis=-1)
        else:
            pooled = queries.reshape(groups, 4, channels, height // 2, 2, width // 2, 2).mean(axis=(-1, -3))
            top = np.concatenate([pooled[:, 0], pooled[:, 1]], axis=-1)
            bottom = np.concatenate([pooled[:, 2], pooled[:, 3]], axis=-1)
            tiled = np.concatenate([top, bottom], axis=-2)
        return tiled[:, None].astype(np.float32)
