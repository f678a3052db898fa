"""A model of ours nowhere in the project, built in one call and served: ResNet-18 (written here, random
weights, 3x224x224 -> 1000) behind Berrut (k=2, one straggler), on the real tritonserver. With a member
unloaded the ensemble still answers, with the decode of the members left."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import tritonclient.http as http
from torch import nn

from coded_serving.codes import make_code
from coded_serving.deployment.launcher import ServerConfig, TritonServer, free_port, with_admin_key
from coded_serving.training.build import build_repository
from coded_serving.training.onnx_export import export_onnx
from coded_serving.training.tuning import onnx_predict

pytestmark = pytest.mark.server
SHAPE = (3, 224, 224)
DEADLINE_MS = 60_000.0  # every member answers or fails before it: the decode is the members' own


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        self.layers = nn.Sequential(*(nn.Sequential(BasicBlock(i, o, s), BasicBlock(o, o, 1)) for i, o, s in widths))
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
        return self.fc(torch.flatten(features, 1))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    model = folder / "resnet18.onnx"
    export_onnx(ResNet18(), model, "image", "logits", SHAPE, check_inputs=np.zeros((2, *SHAPE), np.float32))
    start = time.perf_counter()
    result = build_repository(model, "berrut", 2, folder / "repository", stragglers=1, deadline_ms=DEADLINE_MS,
                              progress=False)
    print(f"training-free build of ResNet-18: {time.perf_counter() - start:.1f} s")
    config = ServerConfig(result.repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(config, folder / "server.log") as server:
        client = with_admin_key(http.InferenceServerClient(server.config.http_url, network_timeout=300.0),
                                server.config.http_url)
        yield result, model, client
        client.close()


def _ask(client: http.InferenceServerClient, model: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The answer, and the ``reconstructed`` flags when ``model`` is a coded ensemble (the model itself has none)."""
    query = http.InferInput("image", list(images.shape), "FP32")
    query.set_data_from_numpy(images)
    answer = client.infer(model, [query])
    return answer.as_numpy("logits"), answer.as_numpy("reconstructed")


def test_built_resnet_answers_and_survives_an_unloaded_member(served) -> None:
    result, model, client = served
    code = make_code(result.code)
    images = np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32)  # one coding group
    predict = onnx_predict(model, threads=2, batch_size=4)
    workers = predict(code.encode(images[None])[0])[None]  # [1 group, N workers, 1000]

    logits, _ = _ask(client, "resnet18", images)
    np.testing.assert_allclose(logits, predict(images), rtol=1e-4, atol=1e-4)

    every = code.decode(workers, np.ones(code.num_workers, bool))[0]
    logits, reconstructed = _ask(client, result.ensemble, images)
    np.testing.assert_allclose(logits, every, rtol=1e-3, atol=1e-3)
    assert reconstructed.shape == (2, 1)  # a non-systematic code: every answer is decoded

    member = f"{result.ensemble}_coded_0"
    client.unload_model(member)
    try:
        logits, reconstructed = _ask(client, result.ensemble, images)
    finally:
        client.load_model(member)
    without_first = code.decode(workers, np.arange(code.num_workers) != 0)[0]
    assert not np.allclose(without_first, every, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(logits, without_first, rtol=1e-3, atol=1e-3)
    assert reconstructed.all()
