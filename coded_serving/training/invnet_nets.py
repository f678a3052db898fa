"""Coded-InvNet's networks (docs/codes.md section 3): an invertible classifier F = h . f and the backup encoder g.

f is an i-ResNet: invertible squeezes (space-to-depth) and residual blocks x + r(x) whose residual
r is kept Lipschitz < 1 by spectral normalisation of every convolution, so each block is inverted by
the fixed-point iteration x <- y - r(x) (Banach). Features z = f(x) keep the input's 784 dimensions.
h is a small ReLU MLP on z (a linear layer with ``head_hidden=()``), small enough for the coordinator to
hold and run in numpy: the nonlinear head lifts F's accuracy above what a near-linear f gives a linear head.
g maps the k queries of a group to one backup image whose features should be their mean; it is
symmetric in its inputs by construction (one shared encoder, encodings averaged over the k inputs).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional

IMAGE_SHAPE = (1, 28, 28)
#: Lipschitz bound of each convolution of a residual branch (the i-ResNet paper's 0.9)
LIPSCHITZ_COEFF = 0.9
POWER_ITERATIONS_FINAL = 50


class SpectralConv2d(nn.Module):
    """A stride-1 convolution whose operator norm (as a map on the whole feature map) is kept <= coeff.

    The norm is estimated by power iteration on the convolution itself, not on the reshaped kernel
    matrix (whose norm can be up to kernel-size times smaller, so no bound). Training runs one
    iteration per step and backpropagates through the estimate, as torch's spectral_norm does; eval
    uses the last estimate, so a frozen network is a plain convolution (and exports as one).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, input_shape: tuple[int, int, int],
                 coeff: float = LIPSCHITZ_COEFF):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.coeff = coeff
        u = torch.randn(1, *input_shape)
        self.register_buffer("u", u / u.norm())
        self.register_buffer("sigma", torch.ones(()))

    def _iterate(self, steps: int) -> torch.Tensor:
        """``steps`` power iterations, then sigma = <v, W u> with u, v fixed (gradient flows into W only)."""
        weight, padding = self.conv.weight, self.conv.padding
        with torch.no_grad():
            u = self.u
            for _ in range(steps):
                v = functional.conv2d(u, weight, padding=padding)
                v = v / v.norm()
                u = functional.conv_transpose2d(v, weight, padding=padding)
                u = u / u.norm()
            self.u.copy_(u)
            v = functional.conv2d(u, weight, padding=padding)
            v = v / v.norm()
        return (v * functional.conv2d(u, weight, padding=padding)).sum()

    def refresh(self, steps: int = POWER_ITERATIONS_FINAL) -> None:
        """Converge the norm estimate before freezing: it must bound the final weights."""
        with torch.no_grad():
            self.sigma.copy_(self._iterate(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            sigma = self._iterate(1)
            self.sigma.copy_(sigma.detach())
        else:
            sigma = self.sigma
        scale = torch.clamp(sigma / self.coeff, min=1.0)
        return functional.conv2d(x, self.conv.weight / scale, self.conv.bias, padding=self.conv.padding)


class InvertibleBlock(nn.Module):
    """y = x + r(x), r = conv3x3 . elu . conv1x1 . elu . conv3x3 . elu (i-ResNet), Lip(r) <= coeff^3 < 1."""

    def __init__(self, shape: tuple[int, int, int], hidden: int):
        super().__init__()
        channels, height, width = shape
        self.residual = nn.Sequential(
            nn.ELU(),
            SpectralConv2d(channels, hidden, 3, (channels, height, width)),
            nn.ELU(),
            SpectralConv2d(hidden, hidden, 1, (hidden, height, width)),
            nn.ELU(),
            SpectralConv2d(hidden, channels, 3, (hidden, height, width)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)

    def inverse(self, y: torch.Tensor, iterations: int) -> torch.Tensor:
        x = y
        for _ in range(iterations):
            x = y - self.residual(x)
        return x


class Squeeze(nn.Module):
    """Space-to-depth by 2: a permutation of the pixels, so exactly invertible."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.pixel_unshuffle(x, 2)

    def inverse(self, y: torch.Tensor, iterations: int) -> torch.Tensor:
        return functional.pixel_shuffle(y, 2)


class InvertibleNet(nn.Module):
    """f: [B, 1, 28, 28] -> features [B, 784]. Per stage: a squeeze, then ``blocks`` residual blocks."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2), hidden: tuple[int, ...] = (32, 64)):
        super().__init__()
        if len(blocks) != len(hidden):
            raise ValueError(f"one hidden width per stage: blocks {blocks}, hidden {hidden}")
        layers: list[nn.Module] = []
        channels, height, width = IMAGE_SHAPE
        for count, width_hidden in zip(blocks, hidden):
            layers.append(Squeeze())
            channels, height, width = channels * 4, height // 2, width // 2
            layers += [InvertibleBlock((channels, height, width), width_hidden) for _ in range(count)]
        self.layers = nn.ModuleList(layers)
        self.feature_shape = (channels, height, width)

    @property
    def feature_dim(self) -> int:
        return int(np.prod(self.feature_shape))

    def forward(self, x: torch.Tensor, mix: "Mix | None" = None) -> torch.Tensor:
        """With ``mix``, hidden states are mixed (Manifold Mixup) just before layer ``mix.layer``
        (``len(layers)``: on the features themselves)."""
        for index, layer in enumerate(self.layers):
            if mix is not None and mix.layer == index:
                x = mix.apply(x)
            x = layer(x)
        if mix is not None and mix.layer == len(self.layers):
            x = mix.apply(x)
        return x.flatten(1)

    @property
    def mix_points(self) -> int:
        return len(self.layers) + 1

    def inverse(self, features: torch.Tensor, iterations: int = 10) -> torch.Tensor:
        """f^-1 by block-wise fixed-point iteration; the error shrinks like Lip(r)^iterations per block."""
        x = features.reshape(-1, *self.feature_shape)
        for layer in reversed(self.layers):
            x = layer.inverse(x, iterations)
        return x

    def refresh(self) -> None:
        for module in self.modules():
            if isinstance(module, SpectralConv2d):
                module.refresh()


class Mix(NamedTuple):
    """One Manifold Mixup draw for a batch: mix every example with example ``partner`` at ``layer``."""

    layer: int
    partner: torch.Tensor
    lam: float

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.lam * x + (1 - self.lam) * x[self.partner]


class MixedLogits(NamedTuple):
    logits: torch.Tensor
    mix: Mix


class InvertibleClassifier(nn.Module):
    """F = h . f. In training mode every batch is mixed at a random layer with lambda ~ Beta(1, 1) and
    the forward returns the draw with the logits, for ``mixup_loss``; in eval it is the plain classifier."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2), hidden: tuple[int, ...] = (32, 64),
                 head_hidden: tuple[int, ...] = (256,), num_classes: int = 10):
        super().__init__()
        self.features = InvertibleNet(blocks, hidden)
        widths = (self.features.feature_dim, *head_hidden, num_classes)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.head = nn.Sequential(*layers[:-1])

    @property
    def head_layers(self) -> list[nn.Linear]:
        return [layer for layer in self.head if isinstance(layer, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor | MixedLogits:
        if not self.training:
            return self.head(self.features(x))
        layer = int(torch.randint(self.features.mix_points, ()))
        mix = Mix(layer, torch.randperm(len(x)), float(torch.rand(())))  # U(0, 1) = Beta(1, 1)
        return MixedLogits(self.head(self.features(x, mix)), mix)


def mixup_loss(output: MixedLogits, labels: torch.Tensor) -> torch.Tensor:
    lam = output.mix.lam
    return (lam * functional.cross_entropy(output.logits, labels)
            + (1 - lam) * functional.cross_entropy(output.logits, labels[output.mix.partner]))


class SymmetricGenerator(nn.Module):
    """g: [B, k, 1, 28, 28] -> [B, 1, 28, 28], a U-Net whose encoder runs on each input alone and whose
    encodings (at every scale, skips included) are averaged over the k inputs, so permuting the inputs
    cannot change the output. It predicts a correction to the mean image (zero at initialisation),
    since for a near-linear f the mean image is already close to the inverse-feature target."""

    def __init__(self, width: int = 16):
        super().__init__()
        act = nn.ELU
        self.enc1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), act())
        self.enc2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), act())
        self.enc3 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), act(),
                                  nn.Conv2d(4 * width, 4 * width, 3, padding=1), act())
        self.dec3 = nn.Sequential(nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1), act())
        self.dec2 = nn.Sequential(nn.ConvTranspose2d(4 * width, width, 4, stride=2, padding=1), act())
        self.out = nn.Conv2d(2 * width, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        k = groups.shape[1]
        images = groups.flatten(0, 1)
        e1 = self.enc1(images)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        e1, e2, e3 = (e.unflatten(0, (-1, k)).mean(1) for e in (e1, e2, e3))
        d2 = self.dec3(e3)
        d1 = self.dec2(torch.cat([d2, e2], 1))
        return groups.mean(1) + self.out(torch.cat([d1, e1], 1))


class Backup(nn.Module):
    """The backup member: features f(g(x_1..x_k)) of the generated backup image."""

    def __init__(self, generator: SymmetricGenerator, features: InvertibleNet):
        super().__init__()
        self.generator = generator
        self.features = features

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        return self.features(self.generator(groups))
