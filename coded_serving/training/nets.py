"""The demo's deployed models for [B, 1, 28, 28] images; a parity model reuses the same class."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """Classic LeNet-5 (conv 6-16, dense 120-84-10) with ReLU and max-pooling; 28x28 input padded to 32x32."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """784-200-100-10: a fast baseline, several times cheaper to train than LeNet-5."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, 200),
            nn.ReLU(),
            nn.Linear(200, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


ARCHITECTURES: dict[str, type[nn.Module]] = {"lenet5": LeNet5, "mlp": MLP}


def make_net(arch: str) -> nn.Module:
    try:
        return ARCHITECTURES[arch]()
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}") from None
