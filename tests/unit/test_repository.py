"""Specs, the builder, config.pbtxt writing and parsing, and the Docker deployment files (no server)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from coded_serving.codes import CodeSpec, make_code
from coded_serving.deployment.backends import python_backends
from coded_serving.deployment.builder import (
    coded_ensemble, default_repository_spec, onnx_files_of_default_repository, onnx_tensors, pinned, with_remote_members,
    write_cluster,
)
from coded_serving.deployment.config_writer import model_config, read_config, write_repository
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT
from coded_serving.specs import CodedEnsembleSpec, ForwardModelSpec, RemoteModelSpec, RepositorySpec, TensorSpec

SHIPPED_CONFIGS = sorted(DEFAULT_REPOSITORY.glob("*/config.pbtxt"))
CLUSTER_REPOSITORY = PROJECT_ROOT / "cluster_repository"
CLUSTER_CONFIGS = sorted(CLUSTER_REPOSITORY.glob("*/*/config.pbtxt"))
IMAGE = TensorSpec("image", "FP32", (1, 28, 28))
LOGITS = TensorSpec("logits", "FP32", (10,))


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return onnx_files_of_default_repository(DEFAULT_REPOSITORY, tmp_path_factory.mktemp("onnx"))


def toy_onnx(path: Path, shape: list, dtype=TensorProto.FLOAT) -> Path:
    """An identity model: enough for the builder, which only reads tensors."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "toy",
                              [helper.make_tensor_value_info("x", dtype, shape)],
                              [helper.make_tensor_value_info("y", dtype, shape)])
    onnx.save(helper.make_model(graph), path)
    return path


def test_the_shipped_repository_has_the_default_models():
    names = {path.parent.name for path in SHIPPED_CONFIGS}
    assert {"lenet5", "lenet5_parm", "lenet5_parm_member_0", "lenet5_parm_member_1", "lenet5_parm_coded_0",
            "lenet5_parm_encoder", "lenet5_parm_decoder",
            "lenet5_nercc", *(f"lenet5_nercc_coded_{j}" for j in range(9)), "lenet5_nercc_encoder",
            "lenet5_nercc_decoder",
            "iresnet_invnet", *(f"iresnet_invnet_member_{i}" for i in range(4)), "iresnet_invnet_coded_0",
            "iresnet_invnet_encoder", "iresnet_invnet_decoder"} == names


def test_the_default_spec_can_leave_codes_out(onnx_dir):
    parm_only = {m.name for m in default_repository_spec(onnx_dir, codes=("parm",)).models}
    assert parm_only == {"lenet5", "lenet5_parm", "lenet5_parm_member_0", "lenet5_parm_member_1", "lenet5_parm_coded_0",
                         "lenet5_parm_encoder", "lenet5_parm_decoder"}
    nercc_only = {m.name for m in default_repository_spec(onnx_dir, codes=("nercc",)).models}
    assert "lenet5" in nercc_only and "lenet5_nercc_coded_8" in nercc_only and not any("parm" in n for n in nercc_only)
    invnet_only = {m.name for m in default_repository_spec(onnx_dir, codes=("invnet",)).models}
    assert "iresnet_invnet_coded_0" in invnet_only and not any(n.startswith("lenet5_") for n in invnet_only)
    with pytest.raises(ValueError, match="codes must be some of"):
        default_repository_spec(onnx_dir, codes=("berrut",))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS + CLUSTER_CONFIGS, ids=lambda p: str(p.parent.relative_to(PROJECT_ROOT)))
def test_every_shipped_config_parses_and_names_a_project_backend(path):
    config = read_config(path)
    assert config.name == path.parent.name
    assert (path.parent / "1").is_dir()
    if config.backend == "onnxruntime":
        assert (path.parent / "1" / "model.onnx").is_file()
    elif config.backend != "coded_ensemble":  # the scheduler is compiled, not a Python model
        assert (python_backends() / config.backend / "model.py").is_file()


def test_shipped_repository_is_what_the_builder_writes(onnx_dir, tmp_path):
    """model_repository/ is generated, never edited by hand: rewriting it from its ONNX files changes nothing."""
    written = write_repository(default_repository_spec(onnx_dir), tmp_path / "repo")
    assert sorted(p.relative_to(written) for p in written.glob("*/config.pbtxt")) == [
        p.relative_to(DEFAULT_REPOSITORY) for p in SHIPPED_CONFIGS]
    for path in SHIPPED_CONFIGS:
        assert (written / path.parent.name / "config.pbtxt").read_text() == path.read_text()


def test_shipped_cluster_repository_is_what_the_builder_writes(onnx_dir, tmp_path):
    write_cluster(default_repository_spec(onnx_dir).models, ["worker-0:8001", "worker-1:8001", "worker-2:8001"],
                  tmp_path / "cluster")
    written = sorted((tmp_path / "cluster").glob("*/*/config.pbtxt"))
    assert [p.relative_to(tmp_path / "cluster") for p in written] == [
        p.relative_to(CLUSTER_REPOSITORY) for p in CLUSTER_CONFIGS]
    for path in CLUSTER_CONFIGS:
        assert (tmp_path / "cluster" / path.relative_to(CLUSTER_REPOSITORY)).read_text() == path.read_text()


def test_builder_reads_any_shape_and_dtype_from_the_onnx_file(tmp_path):
    deployed = toy_onnx(tmp_path / "rgb.onnx", ["batch", 3, 224, 224], TensorProto.FLOAT16)
    models = coded_ensemble("rgb", CodeSpec("berrut", 2, {"num_workers": 3}), deployed)
    ensemble = next(m for m in models if isinstance(m, CodedEnsembleSpec))
    assert ensemble.input == TensorSpec("x", "FP16", (3, 224, 224)) and ensemble.output == TensorSpec("y", "FP16", (3, 224, 224))
    encoder = next(m for m in models if m.name == "rgb_encoder")
    assert encoder.tensors()[0] == (TensorSpec("queries", "FP16", (2, 3, 224, 224)),)


def test_builder_refuses_models_without_a_batch_axis_or_with_open_sizes(tmp_path):
    with pytest.raises(ValueError, match="first axis must be the batch"):
        onnx_tensors(toy_onnx(tmp_path / "fixed.onnx", [4, 10]))
    with pytest.raises(ValueError, match="needs every axis but the batch fixed"):
        onnx_tensors(toy_onnx(tmp_path / "open.onnx", ["batch", "width"]))


def test_builder_infers_sizes_an_exporter_left_symbolic(tmp_path):
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "flat",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "features"])])
    onnx.save(helper.make_model(graph), tmp_path / "flat.onnx")
    assert onnx_tensors(tmp_path / "flat.onnx")[1] == TensorSpec("y", "FP32", (6,))


def test_remote_members_are_local_proxies_of_the_workers_models(onnx_dir):
    frontend = with_remote_members(default_repository_spec(onnx_dir).models, ["w0:1", "w1:2", "w2:3"])
    proxies = [m for m in frontend.models if isinstance(m, RemoteModelSpec)]
    assert [(p.url, p.model) for p in proxies] == [("w0:1", "lenet5"), ("w1:2", "lenet5"),
                                                    ("w2:3", "lenet5_parity_parm-addition_k2")]
    ensemble = next(m for m in frontend.models if isinstance(m, CodedEnsembleSpec))
    assert ensemble.members == tuple(p.name for p in proxies)
    with pytest.raises(ValueError, match="url must be host:port"):
        RemoteModelSpec("r", "w0", "m", (IMAGE,), (LOGITS,))


@pytest.mark.parametrize("code, encoder, decoder, postprocess", [
    (CodeSpec("parm-addition", 2), "sum", "subtract", "none"),
    (CodeSpec("parm-concatenation", 2), "model", "subtract", "none"),
    (CodeSpec("berrut", 4, {"num_workers": 5}), "model", "model", "none"),
    (CodeSpec("coded-invnet", 2), "stack", "model", "decoder"),
])
def test_scheduler_parameters_say_what_the_code_allows_natively(code, encoder, decoder, postprocess):
    built = make_code(code)
    members = tuple(f"m{i}" for i in range(built.num_workers))
    parameters = model_config(CodedEnsembleSpec("e", code, members, IMAGE, LOGITS)).parameters
    assert (parameters["encoder"].string_value, parameters["decoder"].string_value,
            parameters["postprocess"].string_value) == (encoder, decoder, postprocess)
    assert int(parameters["min_available"].string_value) == built.min_available
    assert parameters["members"].string_value == ",".join(members)
    via_models = model_config(CodedEnsembleSpec("e", code, members, IMAGE, LOGITS, codec="models")).parameters
    assert (via_models["encoder"].string_value, via_models["decoder"].string_value) == ("model", "model")


def test_specs_refuse_inconsistent_repositories(onnx_dir):
    with pytest.raises(ValueError, match="needs 3 members, got 2"):
        CodedEnsembleSpec("e", CodeSpec("parm-addition", 2), ("a", "b"), IMAGE, LOGITS)
    with pytest.raises(ValueError, match="not in the repository"):
        RepositorySpec((CodedEnsembleSpec("e", CodeSpec("parm-addition", 2), ("a", "b", "c"), IMAGE, LOGITS),))
    with pytest.raises(ValueError, match="needs parity model"):
        coded_ensemble("e", CodeSpec("parm-addition", 2), onnx_dir / "lenet5.onnx")
    with pytest.raises(ValueError, match="codec must be"):
        CodedEnsembleSpec("e", CodeSpec("parm-addition", 2), ("a", "b", "c"), IMAGE, LOGITS, codec="remote")
    with pytest.raises(ValueError, match="forwards to 'lenet5'"):
        RepositorySpec((ForwardModelSpec("f", "lenet5", (IMAGE,), (LOGITS,)),))
    with pytest.raises(ValueError, match="unsupported dtype"):
        TensorSpec("x", "FP8", (1,))


def test_berrut_ensemble_sends_every_worker_a_coded_query(onnx_dir):
    models = coded_ensemble("b", CodeSpec("berrut", 2, {"num_workers": 3}), onnx_dir / "lenet5.onnx")
    assert [m.name for m in models] == ["b_coded_0", "b_coded_1", "b_coded_2", "b", "b_encoder", "b_decoder"]


def test_tensorrt_accelerator_is_written_for_gpu_deployments(onnx_dir):
    config = model_config(default_repository_spec(onnx_dir, accelerator="tensorrt").models[0])
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


def test_docker_image_lays_out_the_backends_as_the_launcher_does():
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "COPY python_backends ./python_backends" in dockerfile
    assert "RUN coded-serving backends /opt/tritonserver/backends" in dockerfile


def test_every_worker_topology_puts_both_models_on_each_worker(onnx_dir):
    models = coded_ensemble("ew", CodeSpec("parm-addition", 2), onnx_dir / "lenet5.onnx",
                            onnx_dir / "lenet5_parity_parm-addition_k2.onnx", topology="every_worker")
    ensemble = next(m for m in models if isinstance(m, CodedEnsembleSpec))
    assert ensemble.members == ("ew_worker_0", "ew_worker_1", "ew_worker_2")
    config = model_config(ensemble)
    assert config.parameters["worker_models"].string_value == (
        "ew_worker_0:ew_worker_0_parity,ew_worker_1:ew_worker_1_parity,ew_worker_2:ew_worker_2_parity")
    # the scheduler keeps a worker to one call at a time; a shared rate-limiter resource would let one
    # worker that holds it stall every model of the server (Triton allocates to the head of its queue only)
    for name in ("ew_worker_1", "ew_worker_1_parity"):
        member = model_config(next(m for m in models if m.name == name))
        assert not member.instance_group[0].HasField("rate_limiter") and not member.HasField("dynamic_batching")
    with pytest.raises(ValueError, match="every_worker"):
        coded_ensemble("bad", CodeSpec("berrut", 2, {"num_workers": 3}), onnx_dir / "lenet5.onnx", topology="every_worker")


def test_pinned_spec_places_data_roles_on_their_members_and_groups_per_request(onnx_dir):
    spec = pinned(default_repository_spec(onnx_dir))
    ensembles = [m for m in spec.models if isinstance(m, CodedEnsembleSpec)]
    assert ensembles and all(e.pin_roles and e.group_close_us == 0 and e.suspend_after_misses == 0 for e in ensembles)
    parameters = model_config(ensembles[0]).parameters
    assert parameters["pin_roles"].string_value == "true" and parameters["group_close_us"].string_value == "0"
