"""Coded-InvNet: the code's formulas, the invertible network, the symmetric generator, a tiny training,
and a tiny ensemble on a real tritonserver answering exactly what the offline computation says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import tritonclient.http as http

from coded_serving.client import ModelClient
from coded_serving.codes import CodedInvNet, CodeSpec, make_code
from coded_serving.codes.invnet import MLPHead
from coded_serving.training.data import Dataset, load_fashion_mnist
from coded_serving.training.invnet_nets import (
    LIPSCHITZ_COEFF, InvertibleClassifier, InvertibleNet, SpectralConv2d, SymmetricGenerator,
)
from coded_serving.benchmarks.invnet import measure_served
from coded_serving.training.invnet import (
    degraded_metrics, export_invnet, head_of, train_generator, train_invertible_classifier,
)
from coded_serving.deployment.builder import (
    INVNET_FEATURES_ONNX, INVNET_HEAD_FILE, invnet_backup_onnx, invnet_repository_spec, pinned,
)
from coded_serving.deployment.launcher import ServerConfig, TritonServer, free_port, with_admin_key
from coded_serving.deployment.config_writer import write_repository

torch.set_num_threads(2)
TINY = {"blocks": (1, 1), "hidden": (8, 16), "head_hidden": (32,)}
K, NAME = 2, "invnet"


def _strengthen(module: torch.nn.Module, factor: float = 5.0) -> None:
    """Random weights scaled up, so the spectral normalisation (not small init) is what keeps Lip < 1."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(factor)


def test_encode_sends_the_whole_group_to_the_backup() -> None:
    code = CodedInvNet(3)
    queries = np.random.default_rng(0).random((5, 3, 1, 4, 4), dtype=np.float32)
    coded = code.encode(queries)
    assert coded.shape == (5, 1, 3, 1, 4, 4) and code.coded_query_shape((1, 4, 4)) == (3, 1, 4, 4)
    np.testing.assert_array_equal(coded[:, 0], queries)
    assert (code.num_workers, code.num_coded, code.systematic, code.learned_parity) == (4, 1, True, True)


@pytest.mark.parametrize("k", [2, 4, 10])
def test_decode_is_k_times_backup_minus_the_others(k: int) -> None:
    code = CodedInvNet(k)
    results = np.random.default_rng(k).normal(size=(6, k + 1, 7)).astype(np.float32)
    for j in range(k):
        available = np.ones(k + 1, bool)
        available[j] = False
        estimates = code.decode(results, available)
        want = k * results[:, k] - results[:, :k].sum(axis=1) + results[:, j]
        np.testing.assert_allclose(estimates[:, j], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.delete(estimates, j, axis=1), np.delete(results[:, :k], j, axis=1))
    no_backup = np.r_[np.ones(k, bool), False]
    np.testing.assert_array_equal(code.decode(results, no_backup), results[:, :k])
    assert not code.decodable(np.r_[False, False, np.ones(k - 1, bool)])


def test_decode_is_exact_when_the_backup_feature_is_the_mean() -> None:
    features = np.random.default_rng(1).normal(size=(4, 3, 5)).astype(np.float32)
    results = np.concatenate([features, features.mean(axis=1, keepdims=True)], axis=1)
    estimates = CodedInvNet(3).decode(results, np.array([True, False, True, True]))
    np.testing.assert_allclose(estimates, features, atol=1e-5)


def test_postprocess_is_the_torch_head_and_the_head_file_round_trips(tmp_path: Path) -> None:
    classifier = InvertibleClassifier(**TINY).eval()
    head_of(classifier).save(tmp_path / INVNET_HEAD_FILE)
    code = make_code(CodeSpec("coded-invnet", 2, {"head_file": INVNET_HEAD_FILE}), tmp_path)
    features = torch.randn(9, classifier.features.feature_dim)
    with torch.no_grad():
        want = classifier.head(features).numpy()
    np.testing.assert_allclose(code.postprocess(features.numpy()), want, rtol=1e-5, atol=1e-5)
    assert len(MLPHead.load(tmp_path / INVNET_HEAD_FILE).layers) == 2
    with pytest.raises(ValueError, match="head.npz"):
        CodedInvNet(2).postprocess(features.numpy())


def test_spectral_conv_bounds_the_true_operator_norm() -> None:
    torch.manual_seed(0)
    conv = SpectralConv2d(2, 3, 3, (2, 5, 5))
    _strengthen(conv)
    conv.refresh()
    conv.eval()
    jacobian = torch.autograd.functional.jacobian(conv, torch.zeros(1, 2, 5, 5)).reshape(3 * 25, 2 * 25)
    true_norm = torch.linalg.matrix_norm(jacobian, ord=2).item()
    assert true_norm == pytest.approx(LIPSCHITZ_COEFF, rel=1e-3)


def test_iresnet_is_inverted_by_fixed_point_iteration() -> None:
    torch.manual_seed(0)
    net = InvertibleNet((2, 1), (8, 16))
    _strengthen(net)
    net.refresh()
    net.eval()
    images = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        features = net(images)
        assert features.shape == (16, 784)
        errors = [(net.inverse(features, n) - images).abs().max().item() for n in (2, 10, 30)]
        a, b = torch.rand(2, 4, 14, 14).unbind()
        residual = net.layers[1].residual
        lipschitz = ((residual(a[None]) - residual(b[None])).norm() / (a - b).norm()).item()
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4
    assert lipschitz < LIPSCHITZ_COEFF ** 3


def test_generator_is_symmetric_in_its_inputs() -> None:
    torch.manual_seed(0)
    generator = SymmetricGenerator(width=4).eval()
    torch.nn.init.normal_(generator.out.weight)  # away from the zero start, where g is the plain mean
    groups = torch.rand(3, 5, 1, 28, 28)
    with torch.no_grad():
        out = generator(groups)
        permuted = generator(groups[:, torch.randperm(5)])
    assert out.shape == (3, 1, 28, 28) and not torch.allclose(out, groups.mean(1))
    torch.testing.assert_close(permuted, out, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def small() -> Dataset:
    data = load_fashion_mnist()
    return Dataset(train=data.train.take(1000), val=data.val.take(200), test=data.test.take(200))


@pytest.fixture(scope="module")
def exported(small: Dataset, tmp_path_factory) -> tuple[Path, dict]:
    classifier = train_invertible_classifier(small, 1, 0, batch_size=64, **TINY)
    generator, figures = train_generator(classifier, K, small, 1, 0, target_groups=100, width=4)
    out = tmp_path_factory.mktemp("invnet")
    export_invnet(classifier, {K: generator}, out, small.test.images)
    return out, figures | {"feature_dim": classifier.features.feature_dim}


def test_tiny_training_inverts_and_exports(exported: tuple[Path, dict]) -> None:
    out, figures = exported
    assert figures["target_groups"] == 100 and figures["inversion_relative_residual"] < 1e-3
    assert {p.name for p in out.iterdir()} >= {INVNET_FEATURES_ONNX, invnet_backup_onnx(K), INVNET_HEAD_FILE}


def _onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    return onnxruntime.InferenceSession(str(path)).run(["features"], {"image": inputs})[0]


@pytest.fixture(scope="module")
def served(exported: tuple[Path, dict], tmp_path_factory):
    """A tiny k=2 Coded-InvNet ensemble on a real tritonserver."""
    out, figures = exported
    workdir = tmp_path_factory.mktemp("served")
    repository = write_repository(pinned(invnet_repository_spec(NAME, K, out, 10000.0)),
                                  workdir / "repository")
    config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(config, workdir / "server.log") as server:
        yield server


def _offline(out: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, MLPHead]:
    """Features of every image and of every group's backup, from the exported ONNX files."""
    features = _onnx(out / INVNET_FEATURES_ONNX, images)
    backup = _onnx(out / invnet_backup_onnx(K), images.reshape(-1, K, 1, 28, 28))
    return features, backup, MLPHead.load(out / INVNET_HEAD_FILE)


def test_served_answers_equal_the_offline_computation(exported: tuple[Path, dict], served, small: Dataset) -> None:
    images = small.test.images[:16]
    features, backup, head = _offline(exported[0], images)
    with ModelClient(served.config.http_url, NAME) as client:
        healthy = client.infer(images)
        admin = with_admin_key(http.InferenceServerClient(served.config.http_url), served.config.http_url)
        admin.unload_model(f"{NAME}_member_0")
        try:
            degraded = client.infer(images)
        finally:
            admin.load_model(f"{NAME}_member_0")
            admin.close()
    np.testing.assert_allclose(healthy.outputs, head(features), rtol=1e-4, atol=1e-4)
    assert not healthy.reconstructed.any()
    np.testing.assert_array_equal(degraded.reconstructed, np.arange(16) % 2 == 0)
    np.testing.assert_allclose(degraded.outputs[::2], head(K * backup - features[1::2]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(degraded.outputs[1::2], head(features[1::2]), rtol=1e-4, atol=1e-4)


def test_served_benchmark_agrees_with_the_offline_figures(exported: tuple[Path, dict], served, small: Dataset) -> None:
    images, labels = small.test.images[:128], small.test.labels[:128]
    features, backup, head = _offline(exported[0], images)
    figures = measure_served(served.config.http_url, NAME, K, images, labels)
    groups = np.arange(len(images)).reshape(-1, K)
    offline = degraded_metrics(CodedInvNet(K), head, features[groups], backup, labels[groups])
    assert figures["unexpected_reconstruction_flags"] == 0 and figures["decoded_with_all_up"] == 0
    assert figures["available_accuracy"] == np.mean(head(features).argmax(1) == labels)
    assert figures["degraded_accuracy"] == pytest.approx(offline["degraded_accuracy"])
    assert figures["recovery_accuracy"] == pytest.approx(offline["recovery_accuracy"])
