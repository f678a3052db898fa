"""Training the deployed classifier and ParM parity models, and measuring degraded mode offline.

Codes are pure numpy (``coded_serving.codes``); training calls the very same ``code.encode`` and
``code.decode`` that serving uses, so a parity model can never be trained on a different encoder.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from .codes import Code
from .data import Dataset
from .nets import make_net


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed torch and force deterministic kernels (free on CPU), then restore the caller's setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    inputs = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return torch.cat([model(batch) for batch in inputs.split(batch_size)]).numpy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(axis=-1) == labels))


@@FIT@@


def _groups(order: np.ndarray, k: int) -> np.ndarray:
    """Indices [G, k] of coding groups taken from ``order``; the remainder (< k queries) is dropped."""
    return order[: len(order) - len(order) % k].reshape(-1, k)


def _parity_inputs(code: Code, images: np.ndarray, groups: np.ndarray) -> np.ndarray:
    if code.num_coded != 1:
        raise ValueError(f"a parity model serves codes with one coded worker, {type(code).__name__} has {code.num_coded}")
    return code.encode(images[groups])[:, 0]


def _degraded_metrics(code: Code, data_logits: np.ndarray, parity_logits: np.ndarray, labels: np.ndarray) -> dict:
    """Decode each position j of every group as if only F(x_j) were missing, with the serving decoder."""
    results = np.concatenate([data_logits, parity_logits[:, None]], axis=1)
    deployed_predictions = data_logits.argmax(axis=-1)
    correct, agree = [], []
    for j in range(code.k):
        available = np.ones(code.num_workers, dtype=bool)
        available[j] = False
        predictions = code.decode(results, available)[:, j].argmax(axis=-1)
        correct.append(predictions == labels[:, j])
        agree.append(predictions == deployed_predictions[:, j])
    return {"degraded_accuracy": float(np.mean(correct)), "recovery_accuracy": float(np.mean(agree))}


def _evaluate_parity(code: Code, deployed_logits: np.ndarray, parity: nn.Module, images: np.ndarray, labels: np.ndarray) -> dict:
    groups = _groups(np.arange(len(labels)), code.k)
    parity_logits = predict_logits(parity, _parity_inputs(code, images, groups))
    return _degraded_metrics(code, deployed_logits[groups], parity_logits, labels[groups]) | {"groups": len(groups)}


def evaluate_degraded(deployed: nn.Module, parity: nn.Module, code: Code, images: np.ndarray, labels: np.ndarray) -> dict:
    """Available accuracy (F alone, every image) beside degraded-mode and recovery accuracy.

    Groups are consecutive images, so the figure is reproducible; the remainder is left out of the
    degraded figures only.
    """
    logits = predict_logits(deployed, images)
    return {"available_accuracy": accuracy(logits, labels)} | _evaluate_parity(code, logits, parity, images, labels)


@@PARITY@@
