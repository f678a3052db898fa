"""Erasure codes for prediction serving, as pure numpy.

Every code works on coding groups of ``k`` queries served by ``num_workers`` workers.
A systematic code sends query ``i`` unchanged to worker ``i`` (``i < k``) and coded
queries to the remaining workers; a non-systematic one sends coded queries to all.

Shapes, with ``G`` coding groups handled at once:

- ``encode(queries [G, k, *in]) -> [G, num_coded, *coded_in]``: inputs of the coded workers.
- ``decode(results [G, num_workers, *out], available bool[num_workers]) -> [G, k, *out]``:
  estimates of every query's output from the workers that answered (rows of absent
  workers are ignored, whatever they hold).
- ``decodable(available) -> bool``: whether ``decode`` can run on that set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class Code(ABC):
    k: int
    num_workers: int
    systematic: bool
    #: coded workers run a learned parity model (ParM), not the deployed model itself
    learned_parity: bool = False
    #: a scheduler may encode natively instead of calling the encoder model: "sum" (the coded query is
    #: the sum of the group's k queries) or "stack" (it is the k queries one after another); None: no
    native_encoder: str | None = None
    #: the single missing data output is ``weight * coded output - sum of the other data outputs``;
    #: a scheduler may decode so natively; None: only the decoder model decodes
    subtraction_weight: float | None = None
    #: answers need ``postprocess`` (so every answer passes through the decoder model)
    postprocesses: bool = False

    @property
    def num_coded(self) -> int:
        return self.num_workers - (self.k if self.systematic else 0)

    @abstractmethod
    def encode(self, queries: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def decode(self, results: np.ndarray, available: np.ndarray) -> np.ndarray: ...

    @property
    @abstractmethod
    def min_available(self) -> int:
        """How many workers of a group must answer for ``decode`` to run."""

    def decodable(self, available: np.ndarray) -> bool:
        return int(np.sum(available)) >= self.min_available

    def coded_query_shape(self, query_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one coded worker's query, given one original query's."""
        return tuple(query_shape)

    def postprocess(self, outputs: np.ndarray) -> np.ndarray:
        """Final answers from worker outputs (originals or decoded), [n, *out] -> [n, *answer].

        Identity for codes whose workers return the answer itself; codes that decode in a
        feature space (Coded-InvNet) apply the model's head here.
        """
        return outputs

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim < 2 or queries.shape[1] != self.k:
            raise ValueError(f"queries must be [groups, {self.k}, ...], got {list(queries.shape)}")
        return queries

    def _check_results(self, results: np.ndarray, available: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        results = np.asarray(results, dtype=np.float32)
        available = np.asarray(available, dtype=bool)
        if results.ndim < 2 or results.shape[1] != self.num_workers:
            raise ValueError(f"results must be [groups, {self.num_workers}, ...], got {list(results.shape)}")
        if available.shape != (self.num_workers,):
            raise ValueError(f"available must be [{self.num_workers}], got {list(available.shape)}")
        if not self.decodable(available):
            raise ValueError(f"{type(self).__name__} cannot decode from workers {np.flatnonzero(available).tolist()}")
        return results, available


@dataclass(frozen=True)
class CodeSpec:
    """What a coded ensemble's config says about its code; ``make_code`` builds it."""

    kind: str
    k: int
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "k": self.k, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict) -> "CodeSpec":
        unknown = set(data) - {"kind", "k", "params"}
        if unknown:
            raise ValueError(f"unknown code spec fields: {sorted(unknown)}")
        return cls(kind=data["kind"], k=int(data["k"]), params=dict(data.get("params", {})))
