"""Specs, config.pbtxt writing and parsing, and the Docker deployment files (no server needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import json_format

from coded_serving.cluster import frontend_repository_spec, write_cluster
from coded_serving.codes import CodeSpec
from coded_serving.default_repository import onnx_files_of_default_repository
from coded_serving.default_repository import IMAGE, LOGITS, coded_ensemble, default_repository_spec
from coded_serving.launcher import DEFAULT_REPOSITORY, PROJECT_BACKENDS, PROJECT_ROOT
from coded_serving.repository import (
    CodedEnsembleSpec, ForwardModelSpec, RepositorySpec, ensemble_from_model_config, read_config, write_repository,
)

SHIPPED_CONFIGS = sorted(DEFAULT_REPOSITORY.glob("*/config.pbtxt"))
CLUSTER_REPOSITORY = PROJECT_ROOT / "cluster_repository"
CLUSTER_CONFIGS = sorted(CLUSTER_REPOSITORY.glob("*/*/config.pbtxt"))


def test_the_shipped_repository_has_the_default_models():
    names = {path.parent.name for path in SHIPPED_CONFIGS}
    assert {"lenet5", "lenet5_parm", "lenet5_parm_member_0", "lenet5_parm_member_1", "lenet5_parm_coded_0",
            "lenet5_parm_encoder", "lenet5_parm_decoder"} == names


@pytest.mark.parametrize("path", SHIPPED_CONFIGS + CLUSTER_CONFIGS, ids=lambda p: str(p.parent.relative_to(PROJECT_ROOT)))
def test_every_shipped_config_parses_as_a_triton_model_config(path):
    config = read_config(path)
    assert config.name == path.parent.name
    assert (path.parent / "1").is_dir()
    if config.backend == "onnxruntime":
        assert (path.parent / "1" / "model.onnx").is_file()
    else:
        assert (PROJECT_BACKENDS / config.backend / "model.py").is_file()


def test_shipped_repository_is_what_the_spec_writes(tmp_path):
    """model_repository/ is generated, never edited by hand: rewriting it from its ONNX files changes nothing."""
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    shutil.copy(DEFAULT_REPOSITORY / "lenet5" / "1" / "model.onnx", onnx_dir / "lenet5.onnx")
    shutil.copy(DEFAULT_REPOSITORY / "lenet5_parm_coded_0" / "1" / "model.onnx",
                onnx_dir / "lenet5_parity_parm-addition_k2.onnx")
    written = write_repository(default_repository_spec(onnx_dir), tmp_path / "repo")
    for path in SHIPPED_CONFIGS:
        assert (written / path.parent.name / "config.pbtxt").read_text() == path.read_text()


def test_shipped_cluster_repository_is_what_the_spec_writes(tmp_path):
    onnx_dir = onnx_files_of_default_repository(DEFAULT_REPOSITORY, tmp_path / "onnx")
    write_cluster(onnx_dir, ["worker-0:8001", "worker-1:8001", "worker-2:8001"], tmp_path / "cluster")
    assert len(CLUSTER_CONFIGS) == 5
    for path in CLUSTER_CONFIGS:
        assert (tmp_path / "cluster" / path.relative_to(CLUSTER_REPOSITORY)).read_text() == path.read_text()


def test_remote_members_are_validated_and_not_looked_up_locally():
    spec = frontend_repository_spec(Path("x"), ["w0:1", "w1:2", "w2:3"])
    assert spec.models[0].members[0] == "grpc://w0:1/lenet5"
    with pytest.raises(ValueError, match="grpc://host:port/model"):
        CodedEnsembleSpec("e", CodeSpec("parm-addition", 2), ("grpc://w0/m", "b", "c"), IMAGE, LOGITS)


def test_ensemble_spec_survives_the_json_config_triton_hands_the_backend():
    (*_, ensemble, _, _) = coded_ensemble("e", CodeSpec("berrut", 4, {"num_workers": 6}), Path("m.onnx"),
                                          deadline_ms=7.5)
    as_json = json.loads(json_format.MessageToJson(ensemble.config(), preserving_proto_field_name=True))
    assert ensemble_from_model_config(as_json) == ensemble


def test_specs_refuse_inconsistent_repositories():
    with pytest.raises(ValueError, match="needs 3 members, got 2"):
        CodedEnsembleSpec("e", CodeSpec("parm-addition", 2), ("a", "b"), IMAGE, LOGITS)
    with pytest.raises(ValueError, match="not in the repository"):
        RepositorySpec((CodedEnsembleSpec("e", CodeSpec("parm-addition", 2), ("a", "b", "c"), IMAGE, LOGITS),))
    with pytest.raises(ValueError, match="needs parity model"):
        coded_ensemble("e", CodeSpec("parm-addition", 2), Path("m.onnx"))
    with pytest.raises(ValueError, match="codec must be"):
        CodedEnsembleSpec("e", CodeSpec("parm-addition", 2), ("a", "b", "c"), IMAGE, LOGITS, codec="remote")
    with pytest.raises(ValueError, match="forwards to 'lenet5'"):
        RepositorySpec((ForwardModelSpec("f", "lenet5", (IMAGE,), (LOGITS,)),))


def test_berrut_ensemble_sends_every_worker_a_coded_query():
    models = coded_ensemble("b", CodeSpec("berrut", 2, {"num_workers": 3}), Path("m.onnx"))
    assert [m.name for m in models] == ["b_coded_0", "b_coded_1", "b_coded_2", "b", "b_encoder", "b_decoder"]


def test_tensorrt_accelerator_is_written_for_gpu_deployments(tmp_path):
    config = default_repository_spec(tmp_path, accelerator="tensorrt").models[0].config()
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"


def compose_command() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def test_docker_compose_file_is_valid():
    for profile in ([], ["--profile", "cpu"], ["--profile", "cluster"]):
        result = subprocess.run([*compose_command(), *profile, "config"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, check=True)
        assert "127.0.0.1:8000" in result.stdout or "host_ip: 127.0.0.1" in result.stdout


def test_docker_image_installs_every_project_backend_but_the_onnxruntime_shim():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    for backend in PROJECT_BACKENDS.iterdir():
        copied = f"python_backends/{backend.name}/model.py /opt/tritonserver/backends/{backend.name}/" in dockerfile
        assert copied == (backend.name != "onnxruntime"), backend.name
