"""Coded-InvNet (Dinh and Lee, ICML 2021; docs/codes.md section 3): decoding in an invertible network's feature space."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Code
from .parm import subtraction_decode


class MLPHead:
    """The classifier's head h, held by the coordinator: linear layers with ReLU between them
    (h(z) = W_n relu(... relu(W_1 z + b_1) ...) + b_n), from an npz with ``weight_<i>`` [out, in]
    and ``bias_<i>`` [out] (written by ``save``)."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]):
        self.layers = [(np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)) for w, b in layers]
        if not self.layers:
            raise ValueError("a head needs at least one layer")
        for index, (weight, bias) in enumerate(self.layers):
            if weight.ndim != 2 or bias.shape != weight.shape[:1]:
                raise ValueError(f"head layer {index}: weight [out, in] and bias [out] expected, "
                                 f"got {weight.shape}, {bias.shape}")
            if index and weight.shape[1] != self.layers[index - 1][0].shape[0]:
                raise ValueError(f"head layer {index} takes {weight.shape[1]} inputs, the layer before gives "
                                 f"{self.layers[index - 1][0].shape[0]}")

    @classmethod
    def load(cls, path: Path | str) -> "MLPHead":
        with np.load(path) as weights:
            count = sum(1 for name in weights.files if name.startswith("weight_"))
            return cls([(weights[f"weight_{i}"], weights[f"bias_{i}"]) for i in range(count)])

    def save(self, path: Path | str) -> None:
        arrays = {}
        for index, (weight, bias) in enumerate(self.layers):
            arrays[f"weight_{index}"], arrays[f"bias_{index}"] = weight, bias
        np.savez(path, **arrays)

    @property
    def feature_dim(self) -> int:
        return self.layers[0][0].shape[1]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.shape[-1:] != (self.feature_dim,):
            raise ValueError(f"the head takes [n, {self.feature_dim}] features, got {list(x.shape)}")
        for index, (weight, bias) in enumerate(self.layers):
            if index:
                x = np.maximum(x, 0)
            x = x @ weight.T + bias
        return x


class CodedInvNet(Code):
    """k data workers return features z_i = f(x_i); the backup worker receives the k queries and returns
    z_p = f(g(x_1..x_k)), trained so that z_p ~ mean_i z_i. A single missing feature is decoded as
    k z_p - sum_{i != j} z_i, and every answer (original or decoded) is the head h applied to a feature.
    """

    systematic = True
    learned_parity = True
    uses_files = True
    native_encoder = "stack"
    postprocesses = True

    def __init__(self, k: int, head_file: str = "head.npz", resource_dir: Path | str | None = None):
        if k < 2:
            raise ValueError(f"Coded-InvNet needs k >= 2, got {k}")
        self.k = k
        self.num_workers = k + 1
        self.head_file = head_file
        self.resource_dir = None if resource_dir is None else Path(resource_dir)
        self._head: MLPHead | None = None

    def encode(self, queries: np.ndarray) -> np.ndarray:
        """The backup worker's one query is the whole group: [G, k, *in] -> [G, 1, k, *in]."""
        return self._check_queries(queries)[:, None]

    def coded_query_shape(self, query_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.k, *query_shape)

    @property
    def min_available(self) -> int:
        return self.k

    @property
    def subtraction_weight(self) -> float:
        return float(self.k)

    def decode(self, results: np.ndarray, available: np.ndarray) -> np.ndarray:
        results, available = self._check_results(results, available)
        return subtraction_decode(results, available, self.k, parity_weight=self.subtraction_weight)

    @property
    def head(self) -> MLPHead:
        """Loaded on first use: specs build the code without its files, only the server's copy answers."""
        if self._head is None:
            if self.resource_dir is None:
                raise ValueError(f"Coded-InvNet needs the directory that holds {self.head_file} to apply its head")
            self._head = MLPHead.load(self.resource_dir / self.head_file)
        return self._head

    def postprocess(self, outputs: np.ndarray) -> np.ndarray:
        """Features [n, D] (originals or decoded) -> logits [n, classes]."""
        return self.head(outputs)
