"""Soaks. Under member churn: clients send without pause while members are unloaded and loaded
back, one at a time; every request must be answered, and memory must stay flat. With a hung member:
open-loop traffic while one member never answers; every request must be answered (reconstructed)
within the ensemble's timeout, with server threads and memory bounded."""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.http as http

from coded_serving.client import ModelClient
from coded_serving.deployment.builder import default_repository_spec, onnx_files_of_default_repository
from coded_serving.deployment.config_writer import write_repository
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, with_admin_key
from coded_serving.runtime.faults import FaultInjection
from coded_serving.specs import CodedEnsembleSpec, OnnxModelSpec, RepositorySpec


@dataclass(frozen=True)
class SoakResult:
    seconds: float
    requests: int
    queries: int
    reconstructed: int
    errors: list[str]
    churn_events: int
    rss_before_mb: float
    rss_after_mb: float


def session_total(leader_pid: int, field: str) -> int:
    """A /proc status field (``VmRSS``, ``Threads``) summed over a server and its backend stubs
    (its process session)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != leader_pid:
                continue
            with open(f"/proc/{entry}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))
        except (OSError, StopIteration):
            continue
    return total


def session_rss_mb(leader_pid: int) -> float:
    return session_total(leader_pid, "VmRSS") / 1024


def run_soak(http_url: str, server_pid: int, ensemble: str, members: list[str], images: np.ndarray,
             seconds: float, clients: int = 4, churn_every_s: float = 1.0, batch_size: int = 2,
             seed: int = 0) -> SoakResult:
    stop = threading.Event()
    answers: list[np.ndarray] = []
    errors: list[str] = []
    churn_events = 0

    def client_loop(offset: int) -> None:
        with ModelClient(http_url, ensemble) as client:
            i = offset
            while not stop.is_set():
                start = i % (len(images) - batch_size)
                try:
                    answers.append(client.infer(images[start:start + batch_size]).reconstructed)
                except Exception as error:  # a lost request: the soak reports every one
                    errors.append(f"{type(error).__name__}: {error}")
                i += clients * batch_size

    def churn() -> None:
        nonlocal churn_events
        chooser = random.Random(seed)
        admin = with_admin_key(http.InferenceServerClient(http_url), http_url)
        try:
            while not stop.wait(churn_every_s / 2):
                member = chooser.choice(members)
                admin.unload_model(member)
                stop.wait(churn_every_s / 2)
                admin.load_model(member)
                churn_events += 1
        finally:
            admin.close()

    warm = ModelClient(http_url, ensemble)
    for i in range(50):
        warm.infer(images[i:i + batch_size])
    warm.close()
    rss_before = session_rss_mb(server_pid)
    threads = [threading.Thread(target=client_loop, args=(n * batch_size,)) for n in range(clients)]
    threads.append(threading.Thread(target=churn))
    start = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    flags = np.concatenate(answers) if answers else np.zeros(0, bool)
    return SoakResult(elapsed, len(answers) + len(errors), len(flags), int(flags.sum()), errors, churn_events,
                      rss_before, session_rss_mb(server_pid))


def hung_member_repository(target: Path, member: str = "lenet5_parm_member_0", hang_ms: float = 3_600_000.0,
                           **ensemble_fields) -> Path:
    """The shipped repository, written again under ``target`` with ``member`` hung: every execute of
    it sleeps ``hang_ms`` (an hour by default: it never answers within any test). ``ensemble_fields``
    change the coded ensemble (e.g. ``timeout_ms``)."""
    spec = default_repository_spec(onnx_files_of_default_repository(DEFAULT_REPOSITORY, Path(target) / "onnx"))

    def change(model):
        if isinstance(model, OnnxModelSpec) and model.name == member:
            return dataclasses.replace(model, parameters=FaultInjection(delay_ms=hang_ms).to_parameters())
        if isinstance(model, CodedEnsembleSpec) and ensemble_fields:
            return dataclasses.replace(model, **ensemble_fields)
        return model

    return write_repository(RepositorySpec(tuple(map(change, spec.models))), Path(target) / "repository")


@dataclass(frozen=True)
class HungMemberResult:
    seconds: float
    rate: float
    sent: int
    answered: int
    reconstructed_requests: int
    #: requests that got an error or no answer within the client's timeout
    errors: list[str]
    latencies_ms: list[float]
    #: (seconds since start, server session RSS MB, server session threads), one sample a second
    samples: list[tuple[float, float, int]]

    def latency_ms(self, q: float) -> float:
        return float(np.quantile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def run_hung_member(http_url: str, server_pid: int, ensemble: str, images: np.ndarray, seconds: float,
                    rate: float = 20.0, max_batch: int = 4, workers: int = 16, client_timeout_s: float = 30.0,
                    seed: int = 0) -> HungMemberResult:
    """Open-loop traffic at ``rate`` requests/s (batch sizes 1..max_batch drawn at random) against an
    ensemble one of whose members never answers; server RSS and threads sampled every second."""
    chooser = random.Random(seed)
    plan = [(i / rate, chooser.randint(1, max_batch), chooser.randrange(len(images) - max_batch))
            for i in range(int(seconds * rate))]
    local = threading.local()
    lock = threading.Lock()
    errors: list[str] = []
    latencies: list[float] = []
    reconstructed = 0
    clients: list[ModelClient] = []

    def client() -> ModelClient:
        if not hasattr(local, "client"):
            local.client = ModelClient(http_url, ensemble, timeout_s=client_timeout_s)
            with lock:
                clients.append(local.client)
        return local.client

    def one(size: int, offset: int) -> None:
        nonlocal reconstructed
        start = time.perf_counter()
        try:
            result = client().infer(images[offset:offset + size])
            if result.outputs.shape[0] != size or not np.isfinite(result.outputs).all():
                raise AssertionError(f"answer of shape {result.outputs.shape} for {size} queries, or non-finite")
        except Exception as error:  # a lost request: reported, never swallowed
            with lock:
                errors.append(f"{type(error).__name__}: {error}")
            return
        with lock:
            latencies.append((time.perf_counter() - start) * 1000)
            reconstructed += bool(result.reconstructed.any())

    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()
    began = time.monotonic()

    def sample() -> None:
        while True:
            samples.append((time.monotonic() - began, session_rss_mb(server_pid), session_total(server_pid, "Threads")))
            if stop.wait(1.0):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(workers) as pool:
        futures = []
        for at, size, offset in plan:
            delay = began + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, size, offset))
        for future in futures:
            future.result()
    elapsed = time.monotonic() - began
    stop.set()
    sampler.join()
    for c in clients:
        c.close()
    return HungMemberResult(elapsed, rate, len(plan), len(latencies), reconstructed, errors, latencies, samples)
