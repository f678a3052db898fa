"""A real tritonserver (the nvidia-pytriton wheel's) on loopback, shared by the serving tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.http as http
from google.protobuf import json_format

from coded_serving.deployment.launcher import (
    DEFAULT_REPOSITORY, PROJECT_ROOT, ServerConfig, TritonServer, free_port, with_admin_key,
)
from coded_serving.deployment.config_writer import read_config


def start_server(repository: Path, log_path: Path) -> TritonServer:
    config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    return TritonServer(config, log_path).start()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    triton = start_server(DEFAULT_REPOSITORY, tmp_path_factory.mktemp("triton") / "server.log")
    yield triton
    triton.stop()


@pytest.fixture
def admin(server):
    """An HTTP client for model control (it sends the server's admin key); every model is back as
    shipped after the test."""
    client = with_admin_key(http.InferenceServerClient(server.config.http_url), server.config.http_url)
    client.overridden = set()
    yield client
    assert server.running, f"tritonserver died during this test; see {server.log_path}"
    for model in client.get_model_repository_index():
        if model["name"] in client.overridden:  # an unchanged repository would not be re-read
            load_with_config(client, model["name"], shipped_config(model["name"]))
        elif model.get("state") != "READY":
            client.load_model(model["name"])
    client.close()


@pytest.fixture
def override_parameters(admin):
    """Reload a model with some config parameters changed, for one test."""
    def override(model: str, parameters: dict[str, str]) -> None:
        config = shipped_config(model)
        for key, value in parameters.items():
            config.parameters[key].string_value = value
        admin.overridden.add(model)
        load_with_config(admin, model, config)
    return override


@pytest.fixture
def override_config(admin):
    """Reload a model with its shipped config changed in place by ``change(config)``, for one test."""
    def override(model: str, change) -> None:
        config = shipped_config(model)
        change(config)
        admin.overridden.add(model)
        load_with_config(admin, model, config)
    return override


@pytest.fixture
def inject_faults(override_parameters):
    """Reload a member with fault-injection parameters."""
    return lambda model, faults: override_parameters(model, faults.to_parameters())


@pytest.fixture
def patient_ensemble(override_parameters):
    """The shipped ensemble with a deadline no loaded test machine misses, for exactness checks."""
    override_parameters("lenet5_parm", {"deadline_ms": "5000"})


def shipped_config(model: str):
    return read_config(DEFAULT_REPOSITORY / model / "config.pbtxt")


def load_with_config(client: http.InferenceServerClient, model: str, config) -> None:
    """Through ``client``, which must send the admin key (the ``admin`` fixture). Unload first: reloading a live Python-backend model in place can crash tritonserver 2.51
    (a segfault in the Python backend's execute while the old instance is torn down)."""
    client.unload_model(model)
    client.load_model(model, config=json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)))


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this tree, built as pip would for the Docker image: from a copy of the sources, as the
    image's COPY gives it, since setuptools' build/ folder in a checkout keeps files deleted since."""
    source, out = tmp_path_factory.mktemp("source") / "tree", tmp_path_factory.mktemp("wheel")
    shutil.copytree(PROJECT_ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info",
                                                                        "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    (built,) = out.glob("coded_serving-*.whl")
    return built
