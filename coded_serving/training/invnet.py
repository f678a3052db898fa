"""Training Coded-InvNet (docs/codes.md section 3): the invertible classifier, the inverse-feature targets,
the backup generator, the offline degraded-mode figures and the export for serving.

Decoding goes through the same ``CodedInvNet.decode`` that serving uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from coded_serving.codes import CodedInvNet
from coded_serving.codes.invnet import MLPHead
from coded_serving.deployment.builder import INVNET_FEATURES_ONNX, INVNET_HEAD_FILE, invnet_backup_onnx
from coded_serving.training.data import Dataset
from coded_serving.training.invnet_nets import IMAGE_SHAPE, Backup, InvertibleClassifier, InvertibleNet, SymmetricGenerator, mixup_loss
from coded_serving.training.onnx_export import export_onnx
from coded_serving.training.parm import _deterministic, _fingerprint, _fit, _groups, classification_epochs

ONNX_CHECK_SIZE = 64


def train_invertible_classifier(
    data: Dataset,
    epochs: int,
    seed: int,
    blocks: tuple[int, ...] = (2, 2),
    hidden: tuple[int, ...] = (32, 64),
    head_hidden: tuple[int, ...] = (256,),
    batch_size: int = 128,
    lr: float = 1e-3,
    checkpoint_path: Path | str | None = None,
    history: list[dict] | None = None,
) -> InvertibleClassifier:
    """Adam on the Manifold Mixup loss; keeps the epoch with the best (unmixed) validation accuracy,
    then converges the spectral-norm estimates so the frozen network is provably invertible."""
    draw_epoch, validate = classification_epochs(data)

    with _deterministic(seed):
        model = InvertibleClassifier(blocks, hidden, head_hidden)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        identity = {"task": "invnet-classifier", "blocks": list(blocks), "hidden": list(hidden),
                    "head_hidden": list(head_hidden), "seed": seed}
        _fit("invnet classifier", model, optimizer, np.random.default_rng(seed), epochs, batch_size,
             draw_epoch, mixup_loss, validate, identity, checkpoint_path, history)
    model.features.refresh()
    return model.eval()


@torch.no_grad()
def features_of(net: nn.Module, inputs: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """f (or the backup f . g) on a numpy batch, in chunks."""
    net.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    return torch.cat([net(batch) for batch in tensor.split(batch_size)]).numpy()


def head_of(classifier: InvertibleClassifier) -> MLPHead:
    return MLPHead([(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in classifier.head_layers])


def draw_groups(rng: np.random.Generator, num_images: int, k: int, count: int) -> np.ndarray:
    """``count`` coding groups [count, k]: consecutive random permutations of the images cut into groups,
    so every image is used before any is used again."""
    groups = []
    while sum(len(g) for g in groups) < count:
        groups.append(_groups(rng.permutation(num_images), k))
    return np.concatenate(groups)[:count]


@torch.no_grad()
def inverse_feature_targets(
    f: InvertibleNet, features: np.ndarray, groups: np.ndarray, iterations: int = 10, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray, float]:
    """x_p* = f^-1(mean_i f(x_i)) for every group, by fixed-point inversion.

    ``features`` are f of every image the groups index. Returns the targets [G, 1, 28, 28], the mean
    features [G, D], and the relative residual ||f(x_p*) - mean|| / ||mean|| that says how exact they are.
    """
    f.eval()
    means = features[groups].mean(axis=1)
    targets = np.concatenate([
        f.inverse(torch.from_numpy(batch), iterations).numpy()
        for batch in np.array_split(means, max(1, len(means) // batch_size))
    ])
    residual = np.linalg.norm(features_of(f, targets) - means) / np.linalg.norm(means)
    return targets, means, float(residual)


def degraded_metrics(code: CodedInvNet, head: MLPHead, data_features: np.ndarray, backup_features: np.ndarray,
                     labels: np.ndarray) -> dict[str, float]:
    """Decode each position j of every group as if only z_j were missing, with the serving decoder.

    ``data_features`` [G, k, D], ``backup_features`` [G, D], ``labels`` [G, k]. Recovery accuracy
    compares with F's own prediction h(z_j); ``feature_error`` is ||z_p - mean z_i|| / ||mean z_i||.
    """
    results = np.concatenate([data_features, backup_features[:, None]], axis=1)
    own = head(data_features).argmax(axis=-1)
    correct, agree = [], []
    for j in range(code.k):
        available = np.ones(code.num_workers, dtype=bool)
        available[j] = False
        predictions = head(code.decode(results, available)[:, j]).argmax(axis=-1)
        correct.append(predictions == labels[:, j])
        agree.append(predictions == own[:, j])
    means = data_features.mean(axis=1)
    return {
        "degraded_accuracy": float(np.mean(correct)),
        "recovery_accuracy": float(np.mean(agree)),
        "feature_error": float(np.linalg.norm(backup_features - means) / np.linalg.norm(means)),
    }


def evaluate_backup(classifier: InvertibleClassifier, backup: nn.Module, k: int, images: np.ndarray,
                    labels: np.ndarray) -> dict[str, float]:
    """Degraded-mode figures over consecutive groups of ``images`` (the remainder left out)."""
    groups = _groups(np.arange(len(labels)), k)
    features = features_of(classifier.features, images)
    return degraded_metrics(CodedInvNet(k), head_of(classifier), features[groups],
                            features_of(backup, images[groups]), labels[groups]) | {"groups": len(groups)}


def train_generator(
    classifier: InvertibleClassifier,
    k: int,
    data: Dataset,
    epochs: int,
    seed: int,
    target_groups: int = 12000,
    iterations: int = 10,
    feature_weight: float = 1.0,
    width: int = 16,
    batch_size: int = 64,
    lr: float = 1e-3,
    checkpoint_path: Path | str | None = None,
    history: list[dict] | None = None,
) -> tuple[SymmetricGenerator, dict]:
    """The backup encoder g by regression: L1(g(x), x_p*) + feature_weight * MSE(f(g(x)), mean f(x_i)).

    A fixed pool of ``target_groups`` training groups gets its x_p* once (inversion is the costly
    part); each epoch visits the pool in a new order. The kept weights are those of the epoch with the
    best validation degraded-mode accuracy. Returns the generator and the targets' figures.
    """
    f = classifier.features.eval()
    for parameter in f.parameters():
        parameter.requires_grad_(False)
    rng = np.random.default_rng(seed)
    groups = draw_groups(rng, len(data.train), k, target_groups)
    targets, means, residual = inverse_feature_targets(f, features_of(f, data.train.images), groups, iterations)
    pixels = int(np.prod(IMAGE_SHAPE))
    packed = torch.from_numpy(np.concatenate([targets.reshape(len(groups), pixels), means], axis=1))
    inputs = torch.from_numpy(data.train.images[groups])
    val_features = features_of(f, data.val.images)
    val_groups = _groups(np.arange(len(data.val)), k)
    code, head = CodedInvNet(k), head_of(classifier)

    def draw_epoch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.from_numpy(rng.permutation(len(groups)))
        return inputs[order], packed[order]

    def loss_fn(generated: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        image_target, mean_target = batch_targets[:, :pixels], batch_targets[:, pixels:]
        return (functional.l1_loss(generated.flatten(1), image_target)
                + feature_weight * functional.mse_loss(f(generated), mean_target))

    def validate(generator: nn.Module) -> dict[str, float]:
        backup = features_of(Backup(generator, f), data.val.images[val_groups])
        metrics = degraded_metrics(code, head, val_features[val_groups], backup, data.val.labels[val_groups])
        return {f"val_{key}": value for key, value in metrics.items()}

    with _deterministic(seed):
        generator = SymmetricGenerator(width)
        optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
        identity = {"task": "invnet-generator", "k": k, "seed": seed, "target_groups": target_groups,
                    "iterations": iterations, "feature_weight": feature_weight, "width": width,
                    "classifier": _fingerprint(classifier)}
        _fit(f"invnet generator k={k}", generator, optimizer, rng, epochs, batch_size,
             draw_epoch, loss_fn, validate, identity, checkpoint_path, history)
    return generator.eval(), {"target_groups": len(groups), "inversion_iterations": iterations,
                              "inversion_relative_residual": residual}


def export_invnet(classifier: InvertibleClassifier, generators: dict[int, SymmetricGenerator], out: Path,
                  check_images: np.ndarray) -> dict[str, float]:
    """Write f, one backup model (f . g) per k and the head; returns each ONNX file's max deviation from torch."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check = check_images[:ONNX_CHECK_SIZE]
    diffs = {INVNET_FEATURES_ONNX: export_onnx(classifier.features, out / INVNET_FEATURES_ONNX, output_name="features",
                                        check_inputs=check)}
    for k, generator in generators.items():
        count = min(ONNX_CHECK_SIZE, len(check_images) // k)
        groups = check_images[: count * k].reshape(count, k, *IMAGE_SHAPE)
        diffs[invnet_backup_onnx(k)] = export_onnx(Backup(generator, classifier.features), out / invnet_backup_onnx(k),
                                            output_name="features", sample_shape=(k, *IMAGE_SHAPE),
                                            check_inputs=groups)
    head_of(classifier).save(out / INVNET_HEAD_FILE)
    return diffs
