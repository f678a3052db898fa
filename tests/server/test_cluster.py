"""A frontend and three worker tritonservers on loopback; a worker is killed -9 under load.
No fixed sleeps: each phase lasts until enough answers arrived (bounded waits)."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpc

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
        for config in worker_configs:  # what the frontend calls: every worker model, over gRPC
            assert_models_ready(config, worker_repo)
        yield servers
    finally:  # stop whatever started, also when another server failed to
        for server in [servers["frontend"], *servers["workers"]]:
            server.stop()


def assert_models_ready(config: ServerConfig, repository, timeout_s: float = 60.0) -> None:
    """Every model of ``repository`` ready on the worker's gRPC endpoint (the one the frontend uses)."""
    models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    client = grpc.InferenceServerClient(config.grpc_url)
    deadline = time.monotonic() + timeout_s
    try:
        while not all(client.is_model_ready(model, client_timeout=5) for model in models):
            assert time.monotonic() < deadline, f"worker {config.grpc_url}: not all of {models} ready"
            time.sleep(0.1)
    finally:
        client.close()


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.05)


def test_worker_killed_under_load_loses_nothing_and_is_picked_up_again(cluster):
    images = load_fashion_mnist().test.images[:256]
    url = cluster["frontend"].config.http_url
    results, failures, stop = [], [], threading.Event()

    def load(seed):
        with ModelClient(url, "lenet5_parm") as client:
            i = seed
            while not stop.is_set():
                try:
                    start = time.monotonic()
                    result = client.infer(images[i % 255:i % 255 + 2])
                    results.append((start, time.monotonic(), result))
                except Exception as error:  # every failure is a lost request: collected, asserted empty
                    failures.append(repr(error))
                i += 7

    threads = [threading.Thread(target=load, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(results) >= 40, 60, "40 answers from the healthy cluster")
        victim = cluster["workers"][0]
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()  # dead and reaped: its sockets are closed before killed_at
        killed_at = time.monotonic()
        wait_until(lambda: sum(1 for s, _, _ in list(results) if s > killed_at) >= 40, 60,
                   "40 answers with the worker dead")
        reviving_at = time.monotonic()
        revived = TritonServer(cluster["worker_configs"][0], cluster["tmp"] / "worker0-again.log").start()
        cluster["workers"][0] = revived
        assert_models_ready(cluster["worker_configs"][0], Path(cluster["worker_configs"][0].model_repository))
        revived_at = time.monotonic()
        # picked up again, no frontend restart: 20 answers in a row with member 0's originals
        wait_until(lambda: len(after := [r for s, _, r in list(results) if s > revived_at]) >= 20
                   and not any(r.reconstructed.any() for r in after[-20:]), 60,
                   "20 answers in a row without a reconstruction after the worker came back")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    victim.stop()

    assert not failures, failures[:3]
    during = [r for s, _, r in results if killed_at < s < reviving_at]
    # two live workers per pair: at most one decode (the live data member may also answer both queries,
    # one after the other), and the dead worker's queries are decoded
    assert during and all(r.reconstructed.sum() <= 1 for r in during), [r.reconstructed for r in during][:10]
    assert any(r.reconstructed.any() for r in during)
    for _, _, result in results:
        assert result.outputs.shape == (2, 10) and np.isfinite(result.outputs).all()
