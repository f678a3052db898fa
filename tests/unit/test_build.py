"""``build_repository`` on a tiny conv net of its own tensor names and shapes ([3, 8, 8] -> [5]): seconds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from coded_serving.deployment.config_writer import read_config
from coded_serving.training.build import build_repository, code_spec, default_name
from coded_serving.training.onnx_export import export_onnx
from coded_serving.training.tuning import onnx_predict

pytestmark = pytest.mark.unit
SHAPE = (3, 8, 8)


class TinyNet(nn.Module):
    """Conv, a residual add, global pooling and a linear head: the ops a real classifier has."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.block(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    export_onnx(TinyNet(), path, "pixels", "scores", SHAPE)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "train.npy"
    np.save(path, np.random.default_rng(0).random((200, *SHAPE), dtype=np.float32))
    return path


def _tensors(config) -> tuple[tuple, tuple]:
    return ([(t.name, list(t.dims)) for t in config.input], [(t.name, list(t.dims)) for t in config.output])


@pytest.mark.parametrize("code", ["berrut", "nercc"])
def test_training_free_build_writes_the_model_its_ensemble_and_members(model: Path, tmp_path: Path, code: str) -> None:
    result = build_repository(model, code, 3, tmp_path, stragglers=2, progress=False)
    assert result.ensemble == f"tiny_{code}" and result.degraded_accuracy is None
    ensemble = read_config(tmp_path / result.ensemble / "config.pbtxt")
    members = ensemble.parameters["members"].string_value.split(",")
    assert members == [f"tiny_{code}_coded_{j}" for j in range(5)]  # N = k + stragglers coded workers
    assert set(result.models) == {"tiny", result.ensemble, *members, f"tiny_{code}_encoder", f"tiny_{code}_decoder"}
    assert _tensors(ensemble) == ([("pixels", [3, 8, 8])], [("scores", [5]), ("reconstructed", [1])])
    for member in ["tiny", *members]:
        assert _tensors(read_config(tmp_path / member / "config.pbtxt")) == ([("pixels", [3, 8, 8])], [("scores", [5])])
        assert (tmp_path / member / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert f"coded-serving serve --model-repository {tmp_path}" in result.summary()


def test_training_free_build_measures_recovery_without_labels(model: Path, images: Path, tmp_path: Path) -> None:
    result = build_repository(model, "berrut", 2, tmp_path, images=images, progress=False)
    assert result.measured_against == "the deployed model's predictions" and result.held_out_images == 200
    assert 0.0 <= result.degraded_accuracy <= 1.0 and result.available_accuracy is None
    assert "recovery accuracy" in result.summary()


def test_parm_build_trains_a_parity_model_of_the_deployed_architecture(model: Path, images: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.npy"
    np.save(labels, np.random.default_rng(1).integers(0, 5, 200))
    result = build_repository(model, "parm-addition", 2, tmp_path / "repository", images=images, labels=labels,
                              epochs=1, progress=False)
    assert result.measured_against == "labels" and result.held_out_images == 20  # the held-out tenth
    assert result.parity_onnx_max_abs_diff <= 1e-4
    parity = onnx.load(str(tmp_path / "repository" / "tiny_parm_coded_0" / "1" / "model.onnx")).graph
    deployed = onnx.load(str(model)).graph
    assert Counter(n.op_type for n in parity.node) == Counter(n.op_type for n in deployed.node)
    assert ([i.name for i in parity.input], [o.name for o in parity.output]) == (["pixels"], ["scores"])
    queries = np.load(images)[:8]
    parity_scores = onnx_predict(tmp_path / "repository" / "tiny_parm_coded_0" / "1" / "model.onnx")(queries)
    assert not np.allclose(parity_scores, onnx_predict(model)(queries))  # trained away from the deployed weights


def _two_input_model(path: Path) -> Path:
    tensors = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 4]) for n in ("a", "b", "sum")]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["sum"])], "two", tensors[:2], tensors[2:])
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize(("arguments", "message"), [
    ({"code": "lagrange"}, "unknown code 'lagrange'"),
    ({"code": "coded-invnet"}, "export/train_invnet.py"),
    ({"k": 1}, "k must be at least 2"),
    ({"code": "parm-addition", "stragglers": 2}, "one missing result per group"),
    ({"code": "parm-addition"}, "give training images"),
    ({"images": "wrong"}, r"\[10, 3, 8, 9\], but the model's input 'pixels' is \['N', 3, 8, 8\]"),
    ({"model": "two"}, "one input"),
])
def test_bad_input_is_named(model: Path, tmp_path: Path, arguments: dict, message: str) -> None:
    options = {"code": "berrut", "k": 2} | arguments
    if options.pop("model", None):
        model = _two_input_model(tmp_path / "two.onnx")
    if options.get("images") == "wrong":
        options["images"] = tmp_path / "wrong.npy"
        np.save(options["images"], np.zeros((10, 3, 8, 9), np.float32))
    with pytest.raises(ValueError, match=message):
        build_repository(model, options.pop("code"), options.pop("k"), tmp_path / "repository", progress=False,
                         **options)
    assert not (tmp_path / "repository").exists()


def test_defaults_are_the_validated_ones_and_names_follow_triton_layout() -> None:
    assert code_spec("nercc", 4, 2).params == {"num_workers": 6, "worker_points": "approxifer", "lambda_enc": 0.0,
                                               "lambda_dec": 1e-7}
    assert default_name(Path("repo/resnet/1/model.onnx")) == "resnet"
    assert default_name(Path("exports/resnet18.onnx")) == "resnet18"


def test_cli_build_prints_the_serve_command_and_names_bad_codes(model: Path, tmp_path: Path, capsys) -> None:
    from coded_serving.cli import main

    assert main(["build", str(model), "--code", "berrut", "--k", "2", "--repository", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert f"coded-serving serve --model-repository {tmp_path / 'r'}" in printed
    assert (tmp_path / "r" / read_config_name(printed) / "config.pbtxt").is_file()
    assert main(["build", str(model), "--code", "raid5", "--k", "2", "--repository", str(tmp_path / "x")]) == 2
    assert "unknown code 'raid5'" in capsys.readouterr().err


def read_config_name(printed: str) -> str:
    """The ensemble the summary tells the user to query."""
    return printed.split("query ")[1].split(" ")[0]
