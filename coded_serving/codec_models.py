"""The logic of the standalone encoder and decoder models, with errors as messages."""

from __future__ import annotations

import json

import numpy as np

from .codes import Code, CodeSpec, make_code


def parse_code(model_config: dict) -> Code:
    return make_code(CodeSpec.from_dict(json.loads(model_config["parameters"]["code"]["string_value"])))


def encode_batch(code: Code, queries: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    if not np.isfinite(queries).all():
        return None, "input 'queries' contains NaN or infinite values"
    return code.encode(queries), None


def decode_batch(code: Code, results: np.ndarray, available: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Decode each item with its own availability row, grouping items that share one."""
    estimates = np.zeros((len(results), code.k, *results.shape[2:]), np.float32)
    for mask in np.unique(available, axis=0):
        if not code.decodable(mask):
            return None, f"cannot decode with available workers {np.flatnonzero(mask).tolist()}"
        rows = (available == mask).all(axis=1)
        present = results[rows][:, mask]
        if not np.isfinite(present).all():
            return None, "input 'results' contains NaN or infinite values where available"
        estimates[rows] = code.decode(results[rows], mask)
    return estimates, None
