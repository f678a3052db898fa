"""Overload, churn and hostile input against live tritonservers."""

from __future__ import annotations

import dataclasses
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from coded_serving.client import ModelClient
from coded_serving.training.data import load_fashion_mnist
from coded_serving.deployment.builder import default_repository_spec, onnx_files_of_default_repository
from coded_serving.runtime.faults import FaultInjection
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, ServerConfig, TritonServer, free_port
from coded_serving.deployment.config_writer import write_repository
from coded_serving.specs import CodedEnsembleSpec, OnnxModelSpec, RepositorySpec
from coded_serving.benchmarks.soak import run_soak

ENSEMBLE = "lenet5_parm"
MEMBERS = ["lenet5_parm_member_0", "lenet5_parm_member_1", "lenet5_parm_coded_0"]


@pytest.fixture(scope="module")
def images():
    return load_fashion_mnist().test.images[:512]


def test_overload_is_rejected_at_once_with_a_clear_error(tmp_path, images):
    """A bounded queue: past it, requests fail fast instead of waiting behind slow members."""
    spec = default_repository_spec(onnx_files_of_default_repository(DEFAULT_REPOSITORY, tmp_path / "onnx"))
    slow = FaultInjection(delay_ms=300)

    def tighten(model):
        if isinstance(model, CodedEnsembleSpec):
            return dataclasses.replace(model, max_batch_size=1, instances=1, max_queue_size=2, deadline_ms=5000)
        if isinstance(model, OnnxModelSpec) and model.name in MEMBERS:
            return dataclasses.replace(model, parameters=slow.to_parameters())
        return model

    repository = write_repository(RepositorySpec(tuple(map(tighten, spec.models))), tmp_path / "repository")
    config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())

    def one(index):
        start = time.monotonic()
        try:
            with ModelClient(config.http_url, ENSEMBLE) as client:
                client.infer(images[index:index + 1])
            return "answered", time.monotonic() - start
        except InferenceServerException as error:
            return str(error), time.monotonic() - start

    with TritonServer(config, tmp_path / "server.log"):
        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(one, range(12)))
    answered = [o for o in outcomes if o[0] == "answered"]
    rejected = [o for o in outcomes if o[0] != "answered"]
    assert len(answered) + len(rejected) == 12
    assert answered and rejected
    for message, seconds in rejected:
        assert "already holds max_in_flight=2 queries" in message
        assert seconds < slow.delay_ms / 1000  # rejected without waiting for a slow member


def test_soak_under_member_churn_loses_nothing_and_keeps_memory_flat(server, images):
    result = run_soak(server.config.http_url, server.pid, ENSEMBLE, MEMBERS, images, seconds=15)
    assert not result.errors, result.errors[:3]
    assert result.requests > 100 and result.churn_events >= 4
    assert 0 < result.reconstructed < result.queries
    assert result.rss_after_mb < 1.25 * result.rss_before_mb


DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT32": np.int32, "UINT8": np.uint8,
          "BOOL": np.bool_}


@st.composite
def hostile_requests(draw):
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    batch = draw(st.integers(0, 70))
    image = draw(st.sampled_from([(1, 28, 28), (28, 28), (1, 28, 27), (3, 28, 28), (1, 1, 28, 28)]))
    fill = draw(st.sampled_from([0.0, 0.5, 1.0, -1e30, 1e30, float("nan"), float("inf")]))
    name = draw(st.sampled_from(["image", "image", "Image", "logits", ""]))
    with np.errstate(invalid="ignore", over="ignore"):
        array = np.full((batch, *image), fill).astype(DTYPES[dtype])
    return name, dtype, array


def is_valid(name: str, dtype: str, array: np.ndarray) -> bool:
    """What the ensemble must answer: the right name, dtype and query shape, 1..64 queries, finite
    pixels of a size LeNet-5 keeps finite (|x| <= 1e30, checked offline)."""
    return (name == "image" and dtype == "FP32" and array.shape[1:] == (1, 28, 28) and 1 <= len(array) <= 64
            and bool(np.isfinite(array).all()) and float(np.abs(array).max(initial=0)) <= 1e30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=hostile_requests())
def test_fuzzed_inputs_get_an_answer_or_a_clear_error(server, request):
    """Valid input is answered; anything else gets an error that says something (never a crash)."""
    name, dtype, array = request
    valid = is_valid(name, dtype, array)
    client = http.InferenceServerClient(server.config.http_url)
    try:
        tensor = http.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        try:
            result = client.infer(ENSEMBLE, [tensor]).as_numpy("logits")
        except InferenceServerException as error:
            assert not valid, f"valid input {dtype} {array.shape} filled with {array.flat[0]} failed: {error}"
            assert str(error).strip() and "stub" not in str(error).lower()
        else:
            assert result.shape == (len(array), 10) and np.isfinite(result).all()
    finally:
        client.close()


def test_server_is_healthy_after_the_fuzzing(server, images):
    with urllib.request.urlopen(f"http://{server.config.http_url}/v2/health/ready", timeout=5) as ready:
        assert ready.status == 200
    with ModelClient(server.config.http_url, ENSEMBLE) as client:
        assert client.infer(images[:4]).outputs.shape == (4, 10)
