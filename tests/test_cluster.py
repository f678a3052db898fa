"""A frontend and three worker tritonservers on loopback; a worker is killed -9 under load."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from coded_serving.client import ModelClient
from coded_serving.cluster import write_cluster
from coded_serving.data import load_fashion_mnist
from coded_serving.default_repository import onnx_files_of_default_repository
from coded_serving.launcher import DEFAULT_REPOSITORY, ServerConfig, TritonServer, free_port


def ports() -> ServerConfig:
    return ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())


@pytest.fixture
def cluster(tmp_path):
    configs = [ports() for _ in range(3)]
    frontend_repo, worker_repo = write_cluster(
        onnx_files_of_default_repository(DEFAULT_REPOSITORY, tmp_path / "onnx"), [c.grpc_url for c in configs], tmp_path / "cluster",
        deadline_ms=50)
    worker_configs = [ServerConfig(worker_repo, http_port=c.http_port, grpc_port=c.grpc_port,
                                   metrics_port=c.metrics_port) for c in configs]
    workers = [TritonServer(c, tmp_path / f"worker{i}.log") for i, c in enumerate(worker_configs)]
    frontend = TritonServer(ServerConfig(frontend_repo, http_port=free_port(), grpc_port=free_port(),
                                         metrics_port=free_port()), tmp_path / "frontend.log")
    servers = {"workers": workers, "frontend": frontend, "worker_configs": worker_configs, "tmp": tmp_path}
    try:
        with ThreadPoolExecutor(4) as pool:
            for started in [pool.submit(server.start) for server in [*workers, frontend]]:
                started.result()
        yield servers
    finally:  # stop whatever started, also when another server failed to
        for server in [servers["frontend"], *servers["workers"]]:
            server.stop()
