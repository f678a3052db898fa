"""A stronger ParM parity-model recipe than ParM's own (docs/codes.md section 1), used by the shipped default.

ParM allows any parity architecture and any training as long as F_P(encode(x_1..x_k)) approximates
sum_i F(x_i). Three changes over the reference recipe (same architecture as F, MSE, constant lr):

- architecture: ``WideLeNet``, a LeNet-shaped CNN with wider convolutions and batch normalisation
  (the input is a sum of k images, so its scale grows with k), or the deployed graph itself
  (``training.build.own_architecture``) started from the deployed weights;
- loss: the MSE of ParM plus a distillation term on what the subtraction decoder returns: for every
  position j, KL(softmax(F(x_j)/T) || softmax(decoded_j/T)), decoded_j = F_P(P) - sum_{i != j} F(x_i).
  The MSE treats every logit alike; the decoder's argmax is what degraded-mode accuracy counts. The
  targets are still F's outputs, never labels, so the parity model learns F, not the task;
- schedule: cosine learning-rate decay to zero over the epochs.

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


def parity_loss(output: torch.Tensor, member_logits: torch.Tensor, distill_weight: float, temperature: float) -> torch.Tensor:
    """``member_logits`` [B, k, C]: F(x_i) of the group. MSE to their sum plus the decoded distillation term."""
    total = member_logits.sum(dim=1)
    loss = functional.mse_loss(output, total)
    if distill_weight:
        decoded = output[:, None, :] - total[:, None, :] + member_logits  # [B, k, C]
        log_p = functional.log_softmax(decoded / temperature, dim=-1)
        target = functional.softmax(member_logits / temperature, dim=-1)
        kl = functional.kl_div(log_p.flatten(0, 1), target.flatten(0, 1), reduction="batchmean")
        loss = loss + distill_weight * temperature ** 2 * kl
    return loss


def train_parity(
    deployed: nn.Module, code: Code, parity: nn.Module, data: Dataset, epochs: int, seed: int = 0, *,
    lr: float = 1e-3, weight_decay: float = 1e-5, batch_size: int = 64, distill_weight: float = 1.0,
    temperature: float = 1.0, history: list[dict] | None = None, progress: bool = True,
) -> nn.Module:
    """Train ``parity`` in place (Adam, cosine decay) and return it with its best validation epoch's weights."""
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
            inputs = torch.from_numpy(_parity_inputs(code, data.train.images, groups))
            targets = torch.from_numpy(train_logits[groups])
            parity.train()
            total_loss = 0.0
            for batch_inputs, batch_targets in zip(inputs.split(batch_size), targets.split(batch_size)):
                loss = parity_loss(parity(batch_inputs), batch_targets, distill_weight, temperature)
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
