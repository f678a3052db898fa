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
from coded_serving.deployment.builder import default_repository_spec, onnx_files_of_default_repository, write_cluster
from coded_serving.training.data import load_fashion_mnist
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, ServerConfig, TritonServer, free_port


def ports() -> ServerConfig:
    return ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())


@pytest.fixture
def cluster(tmp_path):
    configs = [ports() for _ in range(3)]
    onnx_dir = onnx_files_of_default_repository(DEFAULT_REPOSITORY, tmp_path / "onnx")
    models = default_repository_spec(onnx_dir, deadline_ms=50).models
    frontend_repo, worker_repo = write_cluster(models, [c.grpc_url for c in configs], tmp_path / "cluster")
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


def test_worker_killed_under_load_loses_nothing_and_is_picked_up_again(cluster):
    images = load_fashion_mnist().test.images[:256]
    url = cluster["frontend"].config.http_url
    results, failures, stop = [], [], threading.Event()

    def load(seed):
        with ModelClient(url, "lenet5_parm") as client:
            i = seed
            while not stop.is_set():
                try:
                    results.append((time.monotonic(), client.infer(images[i % 255:i % 255 + 2])))
                except Exception as error:  # every failure is a lost request: collected, asserted empty
                    failures.append(repr(error))
                i += 7

    threads = [threading.Thread(target=load, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    victim = cluster["workers"][0]
    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    time.sleep(3)
    reviving_at = time.monotonic()  # the worker may answer over gRPC before its HTTP readiness is seen
    revived = TritonServer(cluster["worker_configs"][0], cluster["tmp"] / "worker0-again.log").start()
    cluster["workers"][0] = revived
    revived_at = time.monotonic()
    time.sleep(4)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    victim.stop()

    assert not failures
    during = [r for t, r in results if killed_at + 0.5 < t < reviving_at]
    after = [r for t, r in results if t > revived_at + 2]
    assert during and after
    assert all(r.reconstructed[0] for r in during)  # member 0's queries came from the parity
    assert not any(r.reconstructed.any() for r in after[-20:])  # the worker is back, no frontend restart
    for _, result in results:
        assert result.outputs.shape == (2, 10) and np.isfinite(result.outputs).all()
