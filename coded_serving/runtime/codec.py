"""The logic of the standalone encoder and decoder models, with errors as messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from coded_serving.codes import Code, CodeSpec, make_code


def parse_code(model_config: dict, resource_dir: Path | None = None) -> Code:
    """The code a codec model's config names; ``resource_dir`` holds its files (e.g. a head)."""
    spec = CodeSpec.from_dict(json.loads(model_config["parameters"]["code"]["string_value"]))
    return make_code(spec, resource_dir)


def encode_batch(code: Code, queries: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    if np.issubdtype(queries.dtype, np.floating) and not np.isfinite(queries).all():
        return None, "input 'queries' contains NaN or infinite values"
    return code.encode(queries).astype(queries.dtype, copy=False), None


def decode_batch(code: Code, results: np.ndarray, available: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Decode each item with its own availability row, grouping items that share one; answers
    come out postprocessed (identity for most codes, Coded-InvNet's head)."""
    estimates = None
    for mask in np.unique(available, axis=0):
        if not code.decodable(mask):
            return None, f"cannot decode with available workers {np.flatnonzero(mask).tolist()}"
        rows = (available == mask).all(axis=1)
        if not np.isfinite(results[rows][:, mask]).all():
            return None, "input 'results' contains NaN or infinite values where available"
        decoded = code.decode(results[rows], mask)
        answers = code.postprocess(decoded.reshape(-1, *decoded.shape[2:]))
        answers = answers.reshape(*decoded.shape[:2], *answers.shape[1:])
        if estimates is None:
            estimates = np.zeros((len(results), *answers.shape[1:]), results.dtype)
        estimates[rows] = answers
    return estimates, None
