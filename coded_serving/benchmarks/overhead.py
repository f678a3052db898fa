"""The scheduler's cost over a direct call, with no straggler: the price of protection.

Models are measured interleaved (one request to each in turn), so machine noise hits all alike.
Beside the coded ensemble stand the deployed model with as many instances as the ensemble has
members (the closed loop's fair comparison) and a model that only forwards each request over
Python BLS: the floor that any scheduler written as a Triton Python model would pay. Triton's own
statistics split each request's time into the front model's execute and its members' executes.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coded_serving.client import ModelClient
from coded_serving.deployment.builder import DEFAULT_DEPLOYED_ONNX, default_repository_spec, onnx_model
from coded_serving.benchmarks.report_sections import machine_description
from coded_serving.deployment.config_writer import write_repository
from coded_serving.deployment.launcher import with_admin_key
from coded_serving.specs import CodedEnsembleSpec, ForwardModelSpec, RepositorySpec

DIRECT = "lenet5"
FORWARD = "lenet5_bls_forward"
FORWARD_TARGET = "lenet5_forwarded"
CODED = "lenet5_parm"
MODEL_CODEC = "lenet5_parm_codec_models"
EQUAL_INSTANCES = "lenet5_x3"
MODELS = (DIRECT, EQUAL_INSTANCES, FORWARD, CODED, MODEL_CODEC)
#: what each front model calls, for the breakdown
CALLEES = {DIRECT: (), FORWARD: (FORWARD_TARGET,), CODED: ("lenet5_parm_member_0", "lenet5_parm_member_1",
                                                             "lenet5_parm_coded_0")}
#: issue goals the report checks (ratios within one run)
OVERHEAD_GOAL_MS = 0.3
THROUGHPUT_GOAL = 0.8


def overhead_repository(onnx_dir: Path, path: Path) -> Path:
    """The default repository, the deployed model with one instance per ensemble member, the same
    ensemble calling the standalone encoder/decoder models, and the BLS forwarder with its own copy
    of the deployed model."""
    spec = default_repository_spec(onnx_dir)
    ensemble = next(m for m in spec.models if isinstance(m, CodedEnsembleSpec))
    via_models = dataclasses.replace(ensemble, name=MODEL_CODEC, codec="models")
    deployed = Path(onnx_dir) / DEFAULT_DEPLOYED_ONNX
    equal = onnx_model(EQUAL_INSTANCES, deployed, instances=len(ensemble.members))
    target = onnx_model(FORWARD_TARGET, deployed)
    forward = (target, ForwardModelSpec(FORWARD, FORWARD_TARGET, target.inputs, target.outputs))
    return write_repository(RepositorySpec((*spec.models, equal, via_models, *via_models.codec_models(), *forward)),
                            path)


@dataclass(frozen=True)
class LatencySummary:
    model: str
    protocol: str
    concurrency: int
    requests: int
    median_ms: float
    p99_ms: float
    throughput_rps: float


def sequential_latencies(url: str, protocol: str, models: list[str], images: np.ndarray, rounds: int,
                         batch: int = 1) -> dict:
    clients = {model: ModelClient(url, model, protocol) for model in models}
    latencies = {model: [] for model in models}

    def query(i: int) -> np.ndarray:
        return images[np.arange(i * batch, (i + 1) * batch) % len(images)]

    try:
        for model in models:  # warm-up
            for i in range(20):
                clients[model].infer(query(i))
        for i in range(rounds):
            for model in models:
                latencies[model].append(clients[model].infer(query(i)).latency_ms)
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


@dataclass(frozen=True)
class ServerTime:
    """Triton's statistics of one model over a run: mean milliseconds per request."""

    requests: int
    #: from the request's arrival in the server to its response (queue and execute included)
    in_server_ms: float
    execute_ms: float


def inference_statistics(http_url: str) -> dict[str, tuple[int, int, int]]:
    """Cumulative (requests, success ns, compute_infer ns) per model, from Triton's statistics API."""
    import tritonclient.http as triton
    client = with_admin_key(triton.InferenceServerClient(http_url), http_url)  # statistics need it off loopback
    try:
        stats = client.get_inference_statistics()["model_stats"]
    finally:
        client.close()
    return {s["name"]: (s["inference_stats"]["success"]["count"], s["inference_stats"]["success"]["ns"],
                        s["inference_stats"]["compute_infer"]["ns"]) for s in stats}


def server_times(before: dict, after: dict) -> dict[str, ServerTime]:
    times = {}
    for name, (count, success_ns, infer_ns) in after.items():
        count0, success0, infer0 = before.get(name, (0, 0, 0))
        if count > count0:
            n = count - count0
            times[name] = ServerTime(n, (success_ns - success0) / n / 1e6, (infer_ns - infer0) / n / 1e6)
    return times


@dataclass(frozen=True)
class OverheadRun:
    rounds: int
    load_seconds: float
    concurrency: int
    #: (protocol, batch) -> model -> latencies ms
    sequential: dict[tuple[str, int], dict[str, np.ndarray]]
    #: HTTP, batch 1: client latencies ms and server times of every model involved
    breakdown_latencies: dict[str, np.ndarray]
    breakdown_times: dict[str, ServerTime]
    loaded: list[LatencySummary]


def measure(http_url: str, grpc_url: str, images: np.ndarray, rounds: int, load_seconds: float,
            concurrency: int) -> OverheadRun:
    fronts = list(CALLEES)
    before = inference_statistics(http_url)
    breakdown = sequential_latencies(http_url, "http", fronts, images, rounds)
    times = server_times(before, inference_statistics(http_url))
    sequential = {}
    for protocol, url in (("http", http_url), ("grpc", grpc_url)):
        for batch in (1, 2):
            sequential[protocol, batch] = sequential_latencies(url, protocol, list(MODELS), images, rounds, batch)
    loaded = [loaded_run(http_url, "http", model, images, concurrency, load_seconds) for model in MODELS]
    return OverheadRun(rounds, load_seconds, concurrency, sequential, breakdown, times, loaded)


def report(run: OverheadRun) -> str:
    def median(values: np.ndarray) -> float:
        return float(np.median(values))

    http1 = run.sequential["http", 1]
    floor_ms = median(http1[FORWARD]) - median(http1[DIRECT])
    coded_ms = median(http1[CODED]) - median(http1[DIRECT])
    throughput = {summary.model: summary.throughput_rps for summary in run.loaded}
    throughput_ratio = throughput[CODED] / throughput[EQUAL_INSTANCES]
    lines = [
        "# Scheduler overhead (no straggler)",
        "",
        f"Regenerate: `.venv/bin/python loadtest/benchmark_overhead.py` (rounds={run.rounds}, "
        f"load {run.load_seconds:g} s at concurrency {run.concurrency}).",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine_description()}, "
        "tritonserver 2.51 from nvidia-pytriton, CPU only, all models in one server.",
        "",
        f"`{DIRECT}`: the deployed LeNet-5, called directly. `{EQUAL_INSTANCES}`: the same model with one instance "
        f"per member of the ensemble. `{FORWARD}`: a Python model that only forwards each request to a copy of it "
        f"over one synchronous BLS call, the floor of any scheduler written as a Triton Python model. `{CODED}`: "
        f"the coded ensemble (ParM, k=2): the C++ scheduler, ParM's sum and subtraction done natively (the "
        f"default). `{MODEL_CODEC}`: the same ensemble calling the Python encoder model for the parity query (and "
        "the decoder model, when decoding). A lone query (batch 1) goes to one data member, its copy held in "
        "reserve for the other (a hedge on error or after the deadline); a batch of 2 fills a coding group and "
        "goes to all three members.",
        "",
        "## Concurrency 1 (requests interleaved across models)",
        "",
        "| protocol | batch | model | median ms | p99 ms | median over direct ms |",
        "|---|---|---|---|---|---|",
    ]
    for (protocol, batch), latencies in run.sequential.items():
        direct = median(latencies[DIRECT])
        for model, values in latencies.items():
            lines.append(f"| {protocol} | {batch} | `{model}` | {median(values):.3f} | "
                         f"{np.percentile(values, 99):.3f} | {median(values) - direct:+.3f} |")
    lines += [
        "",
        f"At concurrency 1, batch 1, HTTP: the coded ensemble costs {coded_ms:+.2f} ms over a direct call "
        f"(goal <= {OVERHEAD_GOAL_MS} ms: {'met' if coded_ms <= OVERHEAD_GOAL_MS else 'not met'}); forwarding over "
        f"Python BLS alone, before any scheduling, costs {floor_ms:+.2f} ms.",
        "",
        "## Where the time goes (concurrency 1, batch 1, HTTP)",
        "",
        "Triton's statistics API, mean per request: `in server` runs from the request's arrival in the server "
        "to its response, `execute` is the model's own execute; the rest of the client's latency is the HTTP "
        "round trip and the client library. Members are called in parallel.",
        "",
        "| front model | client median ms | in server ms | execute ms | members called | member in server ms "
        "| member execute ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for front, callees in CALLEES.items():
        front_time = run.breakdown_times[front]
        called = [run.breakdown_times[m] for m in callees if m in run.breakdown_times]
        calls = sum(t.requests for t in called) / front_time.requests
        member_in_server = (f"{np.average([t.in_server_ms for t in called], weights=[t.requests for t in called]):.3f}"
                            if called else "-")
        member_execute = (f"{np.average([t.execute_ms for t in called], weights=[t.requests for t in called]):.3f}"
                          if called else "-")
        lines.append(f"| `{front}` | {median(run.breakdown_latencies[front]):.3f} | {front_time.in_server_ms:.3f} | "
                     f"{front_time.execute_ms:.3f} | {calls:.2f} | {member_in_server} | {member_execute} |")
    lines += [
        "",
        f"## Closed loop, concurrency {run.concurrency}, batch 1, HTTP",
        "",
        "| model | requests | throughput req/s | median ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for summary in run.loaded:
        lines.append(f"| `{summary.model}` | {summary.requests} | {summary.throughput_rps:.0f} | "
                     f"{summary.median_ms:.2f} | {summary.p99_ms:.2f} |")
    lines += [
        "",
        f"The coded ensemble served {throughput_ratio:.2f}x the throughput of `{EQUAL_INSTANCES}` (goal >= "
        f"{THROUGHPUT_GOAL}x: {'met' if throughput_ratio >= THROUGHPUT_GOAL else 'not met'}).",
    ]
    return "\n".join(lines) + "\n"
