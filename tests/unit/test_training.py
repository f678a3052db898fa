"""The training and export library on small subsets of Fashion-MNIST: seconds, not minutes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from coded_serving.codes import CodeSpec, ParMAddition, make_code
from coded_serving.training.data import Dataset, load_fashion_mnist
from coded_serving.training.nets import ARCHITECTURES
from coded_serving.training.onnx_export import export_onnx
from coded_serving.training.parm import evaluate_degraded, train_classifier, train_parity_model

torch.set_num_threads(2)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Equal up to float noise: MKL on a busy 2-core machine is not always bitwise reproducible
    (seen: ~1e-6 differences in the first training of a process), while a wrong seed, group draw
    or optimizer state moves weights by orders of magnitude more."""
    return all(torch.allclose(x, y, rtol=0, atol=1e-4) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load_fashion_mnist()


@pytest.fixture(scope="module")
def small(data: Dataset) -> Dataset:
    return Dataset(train=data.train.take(2000), val=data.val.take(500), test=data.test.take(1000))


@pytest.fixture(scope="module")
def deployed(small: Dataset) -> nn.Module:
    return train_classifier("mlp", small, epochs=1, seed=0)


def test_data_shapes_ranges_and_split(data: Dataset) -> None:
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == np.float32 and split.images.shape[1:] == (1, 28, 28)
        assert split.labels.dtype == np.int64 and len(split.labels) == len(split.images)
        assert 0.0 <= split.images.min() and split.images.max() <= 1.0
        assert set(np.unique(split.labels)) == set(range(10))
    again = load_fashion_mnist()
    assert np.array_equal(again.val.images, data.val.images) and np.array_equal(again.train.labels, data.train.labels)
    other = load_fashion_mnist(seed=1)
    assert not np.array_equal(other.val.labels, data.val.labels)
    # The validation examples are carved out of the training set: no image is in both.
    train_keys = {image.tobytes() for image in data.train.images[:5000]}
    assert not any(image.tobytes() in train_keys for image in data.val.images)


def test_missing_data_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architectures_map_images_to_ten_logits(arch: str) -> None:
    assert ARCHITECTURES[arch]()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_tiny_training_beats_chance(small: Dataset, deployed: nn.Module) -> None:
    predictions = deployed(torch.from_numpy(small.test.images)).argmax(dim=1).numpy()
    assert np.mean(predictions == small.test.labels) > 0.5  # chance is 0.1


def test_classifier_training_is_deterministic(small: Dataset, deployed: nn.Module) -> None:
    again = train_classifier("mlp", small, epochs=1, seed=0)
    assert _same_weights(deployed, again)


def test_finished_classifier_checkpoint_is_returned_without_training(small: Dataset, tmp_path: Path) -> None:
    checkpoint = tmp_path / "classifier.pt"
    trained = train_classifier("mlp", small, epochs=1, seed=0, checkpoint_path=checkpoint)
    history: list[dict] = []
    reloaded = train_classifier("mlp", small, epochs=1, seed=0, checkpoint_path=checkpoint, history=history)
    assert history == []
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), reloaded.state_dict().values()))


def test_parity_training_resumes_where_it_stopped(small: Dataset, deployed: nn.Module, tmp_path: Path) -> None:
    code = make_code(CodeSpec("parm-addition", 2))
    checkpoint = tmp_path / "parity.pt"
    first: list[dict] = []
    train_parity_model(deployed, code, "mlp", small, epochs=1, seed=0, checkpoint_path=checkpoint, history=first)
    assert [r["epoch"] for r in first] == [1] and torch.load(checkpoint, weights_only=True)["epoch"] == 1
    resumed_history: list[dict] = []
    resumed = train_parity_model(deployed, code, "mlp", small, epochs=2, seed=0, checkpoint_path=checkpoint, history=resumed_history)
    assert [r["epoch"] for r in resumed_history] == [2] and torch.load(checkpoint, weights_only=True)["epoch"] == 2

    straight = train_parity_model(deployed, code, "mlp", small, epochs=2, seed=0)
    assert _same_weights(straight, resumed)

    metrics = evaluate_degraded(deployed, resumed, code, small.test.images, small.test.labels)
    assert metrics["groups"] == 500
    assert metrics["available_accuracy"] > 0.5
    assert 0.1 < metrics["degraded_accuracy"] < metrics["available_accuracy"]
    assert 0.1 < metrics["recovery_accuracy"] <= 1.0


def test_checkpoint_of_another_deployed_model_is_refused(small: Dataset, deployed: nn.Module, tmp_path: Path) -> None:
    checkpoint = tmp_path / "parity.pt"
    train_parity_model(deployed, ParMAddition(2), "mlp", Dataset(small.train.take(200), small.val, small.test), 1, 0, checkpoint)
    other = ARCHITECTURES["mlp"]()
    with pytest.raises(ValueError, match="delete it to start over"):
        train_parity_model(other, ParMAddition(2), "mlp", small, epochs=2, seed=0, checkpoint_path=checkpoint)


def test_exact_parity_of_a_linear_model_recovers_everything(small: Dataset) -> None:
    """For F(x) = Wx + b, F_P(P) = WP + kb is the perfect parity: degraded mode must equal F itself."""
    k = 4
    torch.manual_seed(0)
    deployed = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    parity = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    with torch.no_grad():
        nn.init.normal_(deployed[1].weight, std=0.05)
        parity[1].weight.copy_(deployed[1].weight)
        parity[1].bias.copy_(k * deployed[1].bias)
    metrics = evaluate_degraded(deployed, parity, ParMAddition(k), small.test.images, small.test.labels)
    assert metrics["groups"] == 250
    assert metrics["recovery_accuracy"] == 1.0
    assert metrics["degraded_accuracy"] == pytest.approx(metrics["available_accuracy"])


def test_onnx_round_trip(small: Dataset, deployed: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    max_abs_diff = export_onnx(ARCHITECTURES["lenet5"](), path, check_inputs=small.test.images[:64])
    assert max_abs_diff < 1e-4
    assert export_onnx(deployed, tmp_path / "mlp.onnx") < 1e-4
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
    for value in (graph.input[0], graph.output[0]):
        batch = value.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value")
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [1, 28, 28]
