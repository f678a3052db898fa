"""A stronger ParM parity-model recipe than ParM's own (docs/codes.md section 1), used by the shipped default.

ParM allows any parity architecture and any training as long as F_P(encode(x_1..x_k)) approximates
sum_i F(x_i). The changes over the reference recipe (same architecture as F, MSE, constant lr):

- architecture: ``WideLeNet``, a LeNet-shaped CNN with wider convolutions and batch normalisation
  (the input is a sum of k images, so its scale grows with k; batch norm after each convolution makes
  the parity model blind to that scale), ``ResParity``, a small residual network with batch norm that
  trains further per epoch than a plain stack at similar multiply-adds (for large k, where the parity
  model underfits), or the deployed graph itself (``training.build.own_architecture``) started from the
  deployed weights;
- loss: the MSE of ParM plus a distillation term on what the subtraction decoder returns: for every
  position j, KL(softmax(F(x_j)/T) || softmax(decoded_j/T)), decoded_j = F_P(P) - sum_{i != j} F(x_i).
  The MSE treats every logit alike; the decoder's argmax is what degraded-mode accuracy counts. The
  targets are still F's outputs, never labels, so the parity model learns F, not the task. Optionally
  (``centred``) the MSE ignores the part of the error common to all classes, which no decoded softmax sees;
- schedule: cosine learning-rate decay to zero over the epochs.

Train and validation losses agree closely (coding groups are re-drawn every epoch, so a group is
practically never seen twice): the parity model underfits, and capacity and epochs are what help;
``max_shift`` augmentation is there for larger parity models that would overfit.

The epoch with the best validation degraded-mode accuracy is kept, as in ``training.parm``.
"""

from __future__ import annotations

import copy
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from coded_serving.codes import Code
from coded_serving.training.data import Dataset
from coded_serving.training.parm import _deterministic, _evaluate_parity, _groups, _parity_inputs, predict_logits


class WideLeNet(nn.Module):
    """LeNet-5's layout (two 5x5 convolutions with pooling, three dense layers), wider, with batch norm."""

    def __init__(self, channels: tuple[int, int] = (32, 64), hidden: tuple[int, int] = (256, 128), classes: int = 10):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 5 * 5, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
            nn.Linear(hidden[1], classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _Block(nn.Module):
    """Basic residual block (two 3x3 convolutions with batch norm); a 1x1 projection when the shape changes."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False), nn.BatchNorm2d(outputs),
        )
        self.shortcut = (nn.Identity() if stride == 1 and inputs == outputs else
                         nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.relu(self.body(x) + self.shortcut(x))


class ResParity(nn.Module):
    """Small ResNet for 28x28 inputs: a 3x3 stem, one stage per entry of ``channels`` (each halves the
    resolution, ``blocks`` residual blocks), then a dense head on the flattened last stage.

    The shortcuts and batch norm let a deeper stack train quickly; the flattened head (not global pooling)
    keeps where things are in the summed image, which the parity model needs to tell k items apart.
    """

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128), hidden: int = 256, blocks: int = 1,
                 classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                   nn.ReLU()]
        size, inputs = 28, channels[0]
        for outputs in channels:
            for index in range(blocks):
                layers.append(_Block(inputs, outputs, 2 if index == 0 else 1))
                inputs = outputs
            size = (size + 1) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(inputs * size * size, hidden), nn.ReLU(),
                                        nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def parity_loss(output: torch.Tensor, member_logits: torch.Tensor, distill_weight: float, temperature: float,
                mse_weight: float = 1.0, centred: bool = False) -> torch.Tensor:
    """``member_logits`` [B, k, C]: F(x_i) of the group. MSE to their sum plus the decoded distillation term.

    Every decoded output is F(x_j) + e with the same error e = F_P(P) - sum_i F(x_i), so ``centred`` drops
    e's mean over the classes from the MSE: a constant shift of all logits changes no softmax and no
    argmax, and the parity model need not spend capacity on it.
    """
    error = output - member_logits.sum(dim=1)
    if centred:
        error = error - error.mean(dim=-1, keepdim=True)
    loss = mse_weight * error.pow(2).mean()
    if distill_weight:
        decoded = member_logits + error[:, None, :]  # [B, k, C], what the subtraction decoder returns
        log_p = functional.log_softmax(decoded / temperature, dim=-1)
        target = functional.softmax(member_logits / temperature, dim=-1)
        kl = functional.kl_div(log_p.flatten(0, 1), target.flatten(0, 1), reduction="batchmean")
        loss = loss + distill_weight * temperature ** 2 * kl
    return loss


def shifted(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Each image moved by up to ``max_shift`` pixels along each axis (zero fill): label-free augmentation,
    since the parity model's targets are then F's outputs on the moved images."""
    if not max_shift:
        return images
    s = max_shift
    height, width = images.shape[-2:]
    padded = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(s, s), (s, s)])
    offsets = rng.integers(0, 2 * s + 1, size=(len(images), 2))
    out = np.empty_like(images)
    for dy in range(2 * s + 1):
        for dx in range(2 * s + 1):
            rows = np.flatnonzero((offsets[:, 0] == dy) & (offsets[:, 1] == dx))
            out[rows] = padded[rows, ..., dy:dy + height, dx:dx + width]
    return out


def train_parity(
    deployed: nn.Module, code: Code, parity: nn.Module, data: Dataset, epochs: int, seed: int = 0, *,
    lr: float = 1e-3, weight_decay: float = 1e-5, batch_size: int = 64, distill_weight: float = 1.0,
    temperature: float = 1.0, mse_weight: float = 1.0, centred: bool = False, max_shift: int = 0,
    history: list[dict] | None = None, progress: bool = True,
) -> nn.Module:
    """Train ``parity`` in place (Adam, cosine decay) and return it with its best validation epoch's weights.

    Coding groups are re-drawn every epoch; with ``max_shift`` every image is also moved at random
    first and F's targets recomputed on the moved images (F is frozen and cheap beside the parity model).
    """
    train_logits = predict_logits(deployed, data.train.images)
    val_logits = predict_logits(deployed, data.val.images)
    rng = np.random.default_rng(seed)
    with _deterministic(seed):
        optimizer = torch.optim.Adam(parity.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = -(-(len(data.train) // code.k) // batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
        best_score, best_state = -np.inf, copy.deepcopy(parity.state_dict())
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            groups = _groups(rng.permutation(len(data.train)), code.k)
            images, logits = data.train.images, train_logits
            if max_shift:
                images = shifted(images, rng, max_shift)
                logits = predict_logits(deployed, images)
            inputs = torch.from_numpy(_parity_inputs(code, images, groups))
            targets = torch.from_numpy(logits[groups])
            parity.train()
            total_loss = 0.0
            for batch_inputs, batch_targets in zip(inputs.split(batch_size), targets.split(batch_size)):
                loss = parity_loss(parity(batch_inputs), batch_targets, distill_weight, temperature, mse_weight, centred)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += loss.item() * len(batch_inputs)
            metrics = _evaluate_parity(code, val_logits, parity, data.val.images, data.val.labels)
            if metrics["degraded_accuracy"] > best_score:
                best_score, best_state = metrics["degraded_accuracy"], copy.deepcopy(parity.state_dict())
            record = {"epoch": epoch, "loss": total_loss / len(inputs),
                      "val_degraded_accuracy": metrics["degraded_accuracy"],
                      "val_recovery_accuracy": metrics["recovery_accuracy"], "seconds": time.perf_counter() - start}
            if progress:
                print(f"parity k={code.k} epoch {epoch}/{epochs} loss {record['loss']:.4f} val degraded "
                      f"{record['val_degraded_accuracy']:.4f} ({record['seconds']:.1f} s)", file=sys.stderr, flush=True)
            if history is not None:
                history.append(record)
    parity.load_state_dict(best_state)
    return parity.eval()
