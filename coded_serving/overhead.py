"""The coordinator's cost over a direct call, with no straggler: the price of protection.

Models are measured interleaved (one request to each in turn), so machine noise hits all alike.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .client import ModelClient
from .default_repository import default_repository_spec
from .repository import CodedEnsembleSpec, RepositorySpec, write_repository

DIRECT = "lenet5"
IN_PROCESS = "lenet5_parm"
MODEL_CODEC = "lenet5_parm_codec_models"


def overhead_repository(onnx_dir: Path, path: Path) -> Path:
    """The default repository plus the same ensemble calling the standalone encoder/decoder."""
    spec = default_repository_spec(onnx_dir)
    ensemble = next(m for m in spec.models if isinstance(m, CodedEnsembleSpec))
    via_models = dataclasses.replace(ensemble, name=MODEL_CODEC, codec="models")
    return write_repository(RepositorySpec((*spec.models, via_models, *via_models.codec_models())), path)


@dataclass(frozen=True)
class LatencySummary:
    model: str
    protocol: str
    concurrency: int
    requests: int
    median_ms: float
    p99_ms: float
    throughput_rps: float


def sequential_latencies(url: str, protocol: str, models: list[str], images: np.ndarray, rounds: int) -> dict:
    clients = {model: ModelClient(url, model, protocol) for model in models}
    latencies = {model: [] for model in models}
    try:
        for model in models:  # warm-up
            for i in range(20):
                clients[model].infer(images[i % len(images)][None])
        for i in range(rounds):
            for model in models:
                latencies[model].append(clients[model].infer(images[i % len(images)][None]).latency_ms)
    finally:
        for client in clients.values():
            client.close()
    return {model: np.array(values) for model, values in latencies.items()}


def loaded_run(url: str, protocol: str, model: str, images: np.ndarray, concurrency: int, seconds: float) -> LatencySummary:
    """Closed loop: ``concurrency`` clients each send the next request as soon as one returns."""
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> list[float]:
        latencies = []
        with ModelClient(url, model, protocol) as client:
            i = seed
            while time.monotonic() < deadline:
                latencies.append(client.infer(images[i % len(images)][None]).latency_ms)
                i += concurrency
        return latencies

    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = np.concatenate([np.array(part) for part in pool.map(worker, range(concurrency))])
    elapsed = time.monotonic() - start
    return summarize(model, protocol, concurrency, latencies, elapsed)


def summarize(model: str, protocol: str, concurrency: int, latencies: np.ndarray, elapsed_s: float) -> LatencySummary:
    return LatencySummary(model, protocol, concurrency, len(latencies), float(np.median(latencies)),
                          float(np.percentile(latencies, 99)), len(latencies) / elapsed_s)


def machine_description() -> str:
    import os
    return f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})"
