"""Training the deployed classifier and ParM parity models, and measuring degraded mode offline.

Codes are pure numpy (``coded_serving.codes``); training calls the very same ``code.encode`` and
``code.decode`` that serving uses, so a parity model can never be trained on a different encoder.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from coded_serving.codes import Code
from coded_serving.training.data import Dataset
from coded_serving.training.nets import make_net


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


def _fingerprint(model: nn.Module) -> str:
    """Names the exact weights, so a checkpoint is never resumed against another deployed model."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _save_atomically(state: dict, path: Path) -> None:
    """Write then rename, so an interrupted run never leaves a half-written checkpoint to resume from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _fit(
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    epochs: int,
    batch_size: int,
    draw_epoch: Callable[[np.random.Generator], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    validate: Callable[[nn.Module], dict[str, float]],
    identity: dict,
    checkpoint_path: Path | str | None,
    history: list[dict] | None,
    progress: bool = True,
) -> nn.Module:
    """The loop both trainings share: returns the weights of the epoch with the best first figure of
    ``validate``. With ``checkpoint_path`` every epoch is saved and an existing checkpoint resumed
    (weights, optimizer, the random state that draws the epochs, best so far), so a resumed run
    follows the path an uninterrupted one would. ``history`` collects one record per epoch run here.
    ``progress``: a line per epoch on stderr, and tqdm's bar over its batches where tqdm is installed.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
    done, best_score, best_state = 0, -np.inf, model.state_dict()
    if checkpoint_path is not None and checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        if checkpoint["identity"] != identity:
            raise ValueError(f"{checkpoint_path} is for {checkpoint['identity']}, not {identity}; delete it to start over")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        rng.bit_generator.state = checkpoint["rng"]
        done, best_score, best_state = checkpoint["epoch"], checkpoint["best_score"], checkpoint["best_state"]
        print(f"{name}: resuming {checkpoint_path} after epoch {done}", file=sys.stderr, flush=True)
    for epoch in range(done + 1, epochs + 1):
        start = time.perf_counter()
        inputs, targets = draw_epoch(rng)
        model.train()
        total_loss = 0.0
        batches = list(zip(inputs.split(batch_size), targets.split(batch_size)))
        for batch_inputs, batch_targets in _progress_bar(batches, f"{name} epoch {epoch}/{epochs}", progress):
            loss = loss_fn(model(batch_inputs), batch_targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch_inputs)
        metrics = validate(model)
        score = next(iter(metrics.values()))
        if score > best_score:
            best_score, best_state = score, copy.deepcopy(model.state_dict())
        if checkpoint_path is not None:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.bit_generator.state}
            best = {"epoch": epoch, "best_score": best_score, "best_state": best_state}
            _save_atomically({"identity": identity} | state | best, checkpoint_path)
        record = {"epoch": epoch, "loss": total_loss / len(inputs)} | metrics | {"seconds": time.perf_counter() - start}
        figures = " ".join(f"{key} {value:.4f}" for key, value in record.items() if key not in ("epoch", "seconds"))
        if progress:
            print(f"{name} epoch {epoch}/{epochs} {figures} ({record['seconds']:.1f} s)", file=sys.stderr, flush=True)
        if history is not None:
            history.append(record)
    model.load_state_dict(best_state)
    return model.eval()


def _progress_bar(batches: list, label: str, progress: bool) -> Iterable:
    """tqdm is optional: without it an epoch shows only its closing line."""
    if not progress:
        return batches
    try:
        from tqdm import tqdm
    except ImportError:
        return batches
    return tqdm(batches, desc=label, leave=False, file=sys.stderr)


def classification_epochs(data: Dataset) -> tuple[Callable, Callable]:
    """For ``_fit`` on a classifier: the training set shuffled each epoch, and validation accuracy."""
    images, labels = torch.from_numpy(data.train.images), torch.from_numpy(data.train.labels)

    def draw_epoch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.from_numpy(rng.permutation(len(labels)))
        return images[order], labels[order]

    def validate(model: nn.Module) -> dict[str, float]:
        return {"val_accuracy": accuracy(predict_logits(model, data.val.images), data.val.labels)}

    return draw_epoch, validate


def train_classifier(
    arch: str,
    data: Dataset,
    epochs: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    checkpoint_path: Path | str | None = None,
    history: list[dict] | None = None,
) -> nn.Module:
    """Adam on cross-entropy; keeps the epoch with the best validation accuracy, not the last one."""
    draw_epoch, validate = classification_epochs(data)

    with _deterministic(seed):
        model = make_net(arch)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        identity = {"task": "classifier", "arch": arch, "seed": seed}
        return _fit(
            arch, model, optimizer, np.random.default_rng(seed), epochs, batch_size,
            draw_epoch, functional.cross_entropy, validate, identity, checkpoint_path, history,
        )


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


def train_parity_model(
    deployed: nn.Module,
    code: Code,
    arch: str | nn.Module,
    data: Dataset,
    epochs: int,
    seed: int,
    checkpoint_path: Path | str | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    history: list[dict] | None = None,
    progress: bool = True,
) -> nn.Module:
    """ParM (docs/codes.md section 1): F_P(encode(x_1..x_k)) regresses sum_i F(x_i) on raw logits, F frozen.

    Coding groups are re-drawn every epoch; the kept weights are those of the epoch with the best
    validation degraded-mode accuracy, since the regression loss is only a proxy for it.
    ``batch_size`` counts coding groups. ``arch``: one of our architectures, trained from scratch, or a
    module trained in place (training/build.py passes the deployed model's own graph).
    """
    # F is frozen, so its outputs are computed once rather than every epoch.
    train_logits = predict_logits(deployed, data.train.images)
    val_logits = predict_logits(deployed, data.val.images)

    def draw_epoch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        groups = _groups(rng.permutation(len(data.train)), code.k)
        inputs = _parity_inputs(code, data.train.images, groups)
        return torch.from_numpy(inputs), torch.from_numpy(train_logits[groups].sum(axis=1))

    def validate(parity: nn.Module) -> dict[str, float]:
        metrics = _evaluate_parity(code, val_logits, parity, data.val.images, data.val.labels)
        return {"val_degraded_accuracy": metrics["degraded_accuracy"], "val_recovery_accuracy": metrics["recovery_accuracy"]}

    with _deterministic(seed):
        parity = make_net(arch) if isinstance(arch, str) else arch
        optimizer = torch.optim.Adam(parity.parameters(), lr=lr, weight_decay=weight_decay)
        identity = {
            "task": "parity",
            # a module is named by its initial weights
            "arch": arch if isinstance(arch, str) else _fingerprint(arch),
            "code": type(code).__name__,
            "k": code.k,
            "seed": seed,
            "deployed": _fingerprint(deployed),
        }
        label = arch if isinstance(arch, str) else "own-architecture"
        return _fit(
            f"{label} parity ({type(code).__name__}, k={code.k})", parity, optimizer, np.random.default_rng(seed),
            epochs, batch_size, draw_epoch, functional.mse_loss, validate, identity, checkpoint_path, history, progress,
        )
