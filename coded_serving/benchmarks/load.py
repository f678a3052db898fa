"""Load-test scenarios with stragglers and failures, run by locust against one real tritonserver.

A benchmark repository serves the coded ensemble and its baselines side by side from the same
ONNX files, so every scenario meets the same server, machine and load:

- ``no_redundancy``: the deployed model with m instances;
- ``equal_resources``: m + m/k instances, load-balanced by Triton, no coding (ParM's fair baseline);
- hedged requests: ``equal_resources`` again, the client sending a second copy after a delay;
- ``parm``: the ParM coded ensemble (m data members, m/k parity members).

"One slow member" is the same delay distribution on one of the instances in every case: one
instance of a multi-instance model (``FaultInjection.instances``), or one data member of the
ensemble. CPU contention pins busy processes and that instance's stub to one core; a failure
SIGKILLs that instance's stub process (or unloads a member) in the middle of a run.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import psutil
import tritonclient.http as http
from google.protobuf import json_format

from coded_serving.codes import CodeSpec
from coded_serving.deployment.builder import coded_ensemble, onnx_model
from coded_serving.runtime.faults import FaultInjection
from coded_serving.deployment.launcher import ServerConfig, TritonServer, free_port, with_admin_key
from coded_serving.deployment.config_writer import model_config, write_repository
from coded_serving.specs import CodedEnsembleSpec, OnnxModelSpec, RepositorySpec

NO_REDUNDANCY = "no_redundancy"
EQUAL_RESOURCES = "equal_resources"
CODED = "parm"
#: the coded ensemble with redundancy on every worker (each worker: deployed + parity model, one device)
CODED_EVERY_WORKER = "parm_ew"


def benchmark_repository_spec(deployed_onnx: Path, parity_onnx: Path, k: int = 2, deadline_ms: float = 10.0,
                              service_ms: float = 0.0) -> RepositorySpec:
    """The coded ensemble (ParM addition, k) and its uncoded baselines, with m = k data members;
    with ``service_ms``, every model execute waits that long (emulated accelerator time)."""
    models = (
        replace(onnx_model(NO_REDUNDANCY, deployed_onnx), instances=k),
        replace(onnx_model(EQUAL_RESOURCES, deployed_onnx), instances=k + 1),
        *coded_ensemble(CODED, CodeSpec("parm-addition", k), deployed_onnx, parity_onnx, deadline_ms=deadline_ms),
    )
    service = FaultInjection(service_ms=service_ms).to_parameters() if service_ms else {}

    def configured(model):
        if isinstance(model, OnnxModelSpec):
            return replace(model, parameters=service)
        return model

    return RepositorySpec(tuple(configured(model) for model in models))


def sweep_repository_spec(deployed_onnx: Path, parity_onnx: Path, k: int = 2, deadline_ms: float = 10.0,
                          deadline_min_ms: float = 3.0, service_ms: float = 5.0) -> RepositorySpec:
    """The load sweep's systems: no redundancy (k instances), Equal-Resources (k + 1), ParM with dedicated
    parity (``CODED``) and ParM with redundancy on every worker (``CODED_EVERY_WORKER``: k + 1 workers, each
    the deployed and the parity model, which the scheduler calls one at a time). Both
    coded ensembles: adaptive deadline (``deadline_min_ms`` .. ``deadline_ms``) and ``copy_when_idle``."""
    def tuned(models):
        return tuple(replace(m, copy_when_idle=True, deadline_min_ms=deadline_min_ms)
                     if isinstance(m, CodedEnsembleSpec) else m for m in models)

    models = (
        replace(onnx_model(NO_REDUNDANCY, deployed_onnx), instances=k),
        replace(onnx_model(EQUAL_RESOURCES, deployed_onnx), instances=k + 1),
        *tuned(coded_ensemble(CODED, CodeSpec("parm-addition", k), deployed_onnx, parity_onnx,
                              deadline_ms=deadline_ms)),
        *tuned(coded_ensemble(CODED_EVERY_WORKER, CodeSpec("parm-addition", k), deployed_onnx, parity_onnx,
                              deadline_ms=deadline_ms, topology="every_worker")),
    )
    service = FaultInjection(service_ms=service_ms).to_parameters() if service_ms else {}
    return RepositorySpec(tuple(replace(m, parameters=service) if isinstance(m, OnnxModelSpec) else m
                                for m in models))


def member_models(spec: RepositorySpec, model: str) -> tuple[str, ...]:
    """The models that do the work of ``model``: itself, or a coded ensemble's members (parity included)."""
    found = next(m for m in spec.models if m.name == model)
    if isinstance(found, CodedEnsembleSpec):
        return (*found.members, *found.parity_members)
    return (model,)


@dataclass(frozen=True)
class Contention:
    """``processes`` busy loops pinned to ``core``, with the stub of one instance of ``model``."""

    model: str
    instance: int = 0
    core: int = 1
    processes: int = 1


@dataclass(frozen=True)
class Failure:
    """``at_s`` into the run: "kill" SIGKILLs one instance's stub process, "unload" unloads the model."""

    kind: str
    model: str
    at_s: float
    instance: int = 0
    #: more models failed with ``model`` the same way (one worker's parity model, say)
    also: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("kill", "unload"):
            raise ValueError(f"failure kind must be 'kill' or 'unload', got {self.kind!r}")


@dataclass(frozen=True)
class Scenario:
    """One locust run: a system (a model, queried some way) under a load, in a condition.

    ``rate_rps`` 0 is closed loop (each user sends as soon as its answer came): maximum throughput.
    The first ``warmup_s`` of arrivals are left out of latency percentiles and throughput.
    """

    system: str
    condition: str
    model: str
    rate_rps: float
    duration_s: float
    batch: int = 1
    users: int = 64
    protocol: str = "http"
    hedge_ms: float = 0.0
    faults: tuple[tuple[str, FaultInjection], ...] = ()
    contention: Contention | None = None
    failure: Failure | None = None
    warmup_s: float = 2.0

    @property
    def slug(self) -> str:
        """Unique per run of a sweep: the rate and the hedge delay are part of it."""
        text = f"{self.condition}-{self.system}-batch{self.batch}"
        text += f"-{self.rate_rps:g}rps" if self.rate_rps else ""
        text += f"-hedge{self.hedge_ms:g}ms" if self.hedge_ms else ""
        text = text.lower()
        return "".join(c if c.isalnum() else "_" for c in text).strip("_")


@dataclass(frozen=True)
class Samples:
    """Every request of a run, as written by the locust users."""

    arrival_s: np.ndarray
    latency_ms: np.ndarray
    send_lag_ms: np.ndarray
    queries: np.ndarray
    reconstructed: np.ndarray
    hedged: np.ndarray
    #: answered after locust began stopping its users, which stalls the load generator
    during_stop: np.ndarray
    errors: tuple[str, ...]

    @classmethod
    def from_csv(cls, path: Path) -> "Samples":
        with open(path, newline="") as stream:
            rows = list(csv.DictReader(stream))

        def column(name: str, dtype) -> np.ndarray:
            return np.array([row[name] for row in rows], dtype=dtype)

        return cls(column("arrival_s", float), column("latency_ms", float), column("send_lag_ms", float),
                   column("queries", int),
                   column("reconstructed", int), column("hedged", int).astype(bool),
                   column("during_stop", int).astype(bool), tuple(row["error"] for row in rows))

    @property
    def ok(self) -> np.ndarray:
        return np.array([not error for error in self.errors], bool)


@dataclass
class ScenarioResult:
    scenario: Scenario
    requests: int
    errors: int
    median_ms: float
    p99_ms: float
    p999_ms: float
    throughput_rps: float
    #: None where the model has no ``reconstructed`` output
    reconstructed_fraction: float | None
    hedged_fraction: float
    cpu_ms_per_query: float
    load_average: float
    #: the highest median latency of any one-second window: a stall shows here, scattered stragglers do not
    worst_second_median_ms: float
    #: how late the load generator sent its requests (p99): large means the run measured the client too
    send_lag_p99_ms: float
    #: successful requests of the measured window, for plots
    latencies_ms: np.ndarray = field(repr=False)
    error_examples: tuple[str, ...] = ()
    #: queries the system's models ran over the whole run (a coded ensemble: rows its member calls
    #: answered, by its own count), None where not counted
    member_calls: int | None = None
    #: queries sent over the whole run (warm-up and errors included): what ``member_calls`` compares with
    queries_sent: int = 0
    #: the p99.9 of each round, for a result pooled from rounds (``pooled``): how far one system moves
    #: between rounds of the same run is the machine's noise
    round_p999_ms: tuple[float, ...] = ()

    @property
    def extra_work(self) -> float | None:
        """Member calls beyond one per query, as a fraction of the queries."""
        if self.member_calls is None or not self.queries_sent:
            return None
        return self.member_calls / self.queries_sent - 1


def summarize(scenario: Scenario, samples: Samples, server_cpu_s: float, load_average: float,
              coded: bool) -> ScenarioResult:
    """Percentiles over the successful requests that arrived after the warm-up and were answered before
    locust began stopping; errors over the whole run."""
    if not len(samples.latency_ms):
        raise RuntimeError(f"scenario {scenario.slug}: locust recorded no request")
    begin, end = samples.arrival_s.min() + scenario.warmup_s, samples.arrival_s.max()
    window = (samples.arrival_s >= begin) & ~samples.during_stop
    good = window & samples.ok
    latencies = samples.latency_ms[good]
    if not len(latencies):
        raise RuntimeError(f"scenario {scenario.slug}: no successful request after the warm-up")
    median, p99, p999 = np.percentile(latencies, [50, 99, 99.9])
    seconds = np.floor(samples.arrival_s[good] - begin)
    worst_second = max(float(np.median(latencies[seconds == second])) for second in np.unique(seconds))
    errors = [error for error in samples.errors if error]
    queries = int(samples.queries.sum())
    return ScenarioResult(
        scenario=scenario,
        requests=len(samples.latency_ms),
        errors=len(errors),
        median_ms=float(median),
        p99_ms=float(p99),
        p999_ms=float(p999),
        throughput_rps=float(good.sum() / (end - begin)),
        reconstructed_fraction=float(samples.reconstructed[good].sum() / samples.queries[good].sum()) if coded else None,
        hedged_fraction=float(samples.hedged[good].mean()),
        cpu_ms_per_query=1000 * server_cpu_s / max(queries, 1),
        load_average=load_average,
        worst_second_median_ms=worst_second,
        send_lag_p99_ms=float(np.percentile(samples.send_lag_ms[window], 99)),
        latencies_ms=latencies,
        error_examples=tuple(sorted(set(errors)))[:3],
        queries_sent=queries,
    )


def pooled(rounds: list[ScenarioResult]) -> ScenarioResult:
    """One result from several runs of one scenario: percentiles over every round's requests, counts summed,
    rates weighted by requests; the worst second and send lag are the worst round's."""
    latencies = np.concatenate([r.latencies_ms for r in rounds])
    weights = np.array([len(r.latencies_ms) for r in rounds], dtype=float)
    mean = lambda values: float(np.average(values, weights=weights))  # noqa: E731
    median, p99, p999 = np.percentile(latencies, [50, 99, 99.9])
    fractions = [r.reconstructed_fraction for r in rounds]
    calls = [r.member_calls for r in rounds]
    return ScenarioResult(
        scenario=replace(rounds[0].scenario, duration_s=sum(r.scenario.duration_s for r in rounds)),
        requests=sum(r.requests for r in rounds),
        errors=sum(r.errors for r in rounds),
        median_ms=float(median),
        p99_ms=float(p99),
        p999_ms=float(p999),
        throughput_rps=mean([r.throughput_rps for r in rounds]),
        reconstructed_fraction=None if None in fractions else mean(fractions),
        hedged_fraction=mean([r.hedged_fraction for r in rounds]),
        cpu_ms_per_query=mean([r.cpu_ms_per_query for r in rounds]),
        load_average=max(r.load_average for r in rounds),
        worst_second_median_ms=max(r.worst_second_median_ms for r in rounds),
        send_lag_p99_ms=max(r.send_lag_p99_ms for r in rounds),
        latencies_ms=latencies,
        error_examples=tuple(sorted({e for r in rounds for e in r.error_examples}))[:3],
        member_calls=None if None in calls else sum(calls),
        queries_sent=sum(r.queries_sent for r in rounds),
        round_p999_ms=tuple(r.p999_ms for r in rounds),
    )


def with_faults(config: dict, faults: FaultInjection | None) -> dict:
    """A model config in Triton's JSON form, its fault-injection parameters replaced by ``faults``'s."""
    parameters = {key: value for key, value in config.get("parameters", {}).items() if not key.startswith("inject_")}
    parameters.update({key: {"string_value": value} for key, value in (faults.to_parameters() if faults else {}).items()})
    return {**config, "parameters": parameters}


def server_pid(http_port: int) -> int:
    """The tritonserver process listening on ``http_port``: stubs are found among its children."""
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "tritonserver" and f"--http-port={http_port}" in (process.info["cmdline"] or ()):
            return process.pid
    raise LookupError(f"no tritonserver process with --http-port={http_port} on this machine")


def stub_process(server: int, model: str, instance: int = 0) -> psutil.Process:
    """The live Python backend stub process of instance ``<model>_0_<instance>`` of server ``server`` (a pid)."""
    name = f"{model}_0_{instance}"
    for child in psutil.Process(server).children():
        try:
            if name in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                return child
        except psutil.Error:
            continue
    raise LookupError(f"no live stub process for instance {name}")


class BenchmarkServer:
    """A tritonserver on loopback serving a benchmark repository, with per-scenario fault control."""

    def __init__(self, spec: RepositorySpec, workdir: Path):
        self.spec = spec
        self.models = {model.name: model for model in spec.models}
        self.workdir = Path(workdir)
        repository = write_repository(spec, self.workdir / "repository")
        config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        self.server = TritonServer(config, self.workdir / "server.log")
        self.admin: http.InferenceServerClient | None = None
        #: models now loaded with something else than their written config
        self._changed: set[str] = set()
        #: models with a killed instance: Triton reloads only what changed, so these are unloaded first
        self._broken: set[str] = set()
        #: times reset() found the server dead and started it afresh
        self.restarts = 0

    def __enter__(self) -> "BenchmarkServer":
        self.server.start()
        url = self.server.config.http_url
        self.admin = with_admin_key(http.InferenceServerClient(url, network_timeout=120), url)
        return self

    def __exit__(self, *exc) -> None:
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        self.server.stop()

    def url(self, protocol: str) -> str:
        return self.server.config.http_url if protocol == "http" else self.server.config.grpc_url

    def load(self, model: str, faults: FaultInjection | None = None) -> None:
        """(Re)load ``model`` from its spec, with ``faults`` instead of its own injection when given."""
        config = json_format.MessageToDict(model_config(self.models[model]), preserving_proto_field_name=True)
        self.admin.load_model(model, config=json.dumps(config if faults is None else with_faults(config, faults)))
        (self._changed.add if faults else self._changed.discard)(model)

    def reset(self) -> None:
        """Every model loaded, as written, with no faults. A server that died is started afresh: Triton's
        Python backend (the CPU stand-in for the members) can abort under load with a boost
        ``lock_exception`` (triton-inference-server/server#8882), and one abort must not end a sweep."""
        if not self.server.running:
            self.restarts += 1
            self.__exit__()
            self.__enter__()
            self._changed.clear()
            self._broken.clear()
        states = {entry["name"]: entry.get("state") for entry in self.admin.get_model_repository_index()}
        for model in self.models:
            broken = model in self._broken
            if broken:
                self.admin.unload_model(model)
            if broken or model in self._changed or states.get(model) != "READY":
                self.load(model)
        self._broken.clear()

    def cpu_seconds(self) -> float:
        """CPU time of the server and its stub processes, reaped stubs included."""
        root = psutil.Process(self.server.pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in root.children(recursive=True):
            try:
                child_times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += child_times.user + child_times.system
        return total

    def stub(self, model: str, instance: int = 0) -> psutil.Process:
        return stub_process(self.server.pid, model, instance)

    def fail(self, failure: Failure) -> None:
        if failure.kind == "kill":
            for model in (failure.model, *failure.also):
                self.stub(model, failure.instance).send_signal(signal.SIGKILL)
                self._broken.add(model)
        else:
            for model in (failure.model, *failure.also):
                self.admin.unload_model(model)

    def member_rows(self, ensemble: str) -> int:
        """Rows the coded ``ensemble``'s member calls answered so far (its ``coded_member_rows_total``)."""
        with urllib.request.urlopen(self.server.config.metrics_url, timeout=30) as page:
            for line in page.read().decode().splitlines():
                if line.startswith("coded_member_rows_total{") and f'model="{ensemble}"' in line:
                    return int(float(line.rsplit(" ", 1)[1]))
        raise LookupError(f"coded_member_rows_total of {ensemble!r} is not on the metrics page")

    def inferences(self, models: tuple[str, ...]) -> int:
        """Queries run so far by ``models`` (Triton's inference_count: batch items of successful executes)."""
        total = 0
        for model in models:
            for entry in self.admin.get_inference_statistics(model).get("model_stats", ()):
                total += int(entry.get("inference_count", 0))
        return total


class CpuContention:
    """Busy-loop processes sharing one core with one stub (all its threads pinned there)."""

    def __init__(self, contention: Contention, stub: psutil.Process):
        self.contention = contention
        self.stub = stub
        #: the busy-loop processes, while contention is on
        self.busy: list[subprocess.Popen] = []
        self._affinity: dict[int, list[int]] = {}

    def __enter__(self) -> "CpuContention":
        core = self.contention.core
        for thread in self.stub.threads():
            try:
                self._affinity[thread.id] = os.sched_getaffinity(thread.id)
                os.sched_setaffinity(thread.id, {core})
            except ProcessLookupError:  # a short-lived thread; new ones inherit their creator's pinning
                continue
        code = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True:\n    pass\n"
        self.busy = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.contention.processes)]
        return self

    def __exit__(self, *exc) -> None:
        for process in self.busy:
            process.kill()
            process.wait()
        for thread, cores in self._affinity.items():
            try:
                os.sched_setaffinity(thread, cores)
            except ProcessLookupError:
                pass


def locust_command(locustfile: Path, scenario: Scenario, url: str, out_dir: Path) -> list[str]:
    """A headless locust run of ``scenario`` against ``url`` that stops by itself: CSV, HTML and exact samples."""
    return [
        sys.executable, "-m", "locust", "-f", str(Path(locustfile).resolve()), "--headless", "--only-summary",
        "-u", str(scenario.users), "-r", str(scenario.users), "-t", f"{scenario.duration_s:g}s", "--stop-timeout", "30",
        "--host", url, "--protocol", scenario.protocol, "--model", scenario.model, "--rate", f"{scenario.rate_rps:g}",
        "--batch", str(scenario.batch), "--hedge-ms", f"{scenario.hedge_ms:g}",
        "--csv", str(out_dir / scenario.slug), "--html", str(out_dir / f"{scenario.slug}.html"),
        "--samples", str(out_dir / f"{scenario.slug}_samples.csv"), "--exit-code-on-error", "0",
    ]


def run_scenario(bench: BenchmarkServer, scenario: Scenario, locustfile: Path, out_dir: Path) -> ScenarioResult:
    """Switch the scenario's faults on, run locust for its duration (failing a member on time), switch them off."""
    out_dir = Path(out_dir).resolve()  # locust runs in it: a relative path would point below itself
    out_dir.mkdir(parents=True, exist_ok=True)
    bench.reset()
    for model, faults in scenario.faults:
        bench.load(model, faults)
    command = locust_command(locustfile, scenario, bench.url(scenario.protocol), out_dir)
    load_average = os.getloadavg()[0]
    cpu_before = bench.cpu_seconds()
    coded = isinstance(bench.models[scenario.model], CodedEnsembleSpec)
    members = member_models(bench.spec, scenario.model)
    # Triton drops an unloaded model's statistics; the scheduler's own count survives a member's loss
    count_calls = (lambda: bench.member_rows(scenario.model)) if coded else (lambda: bench.inferences(members))
    calls_before = count_calls()
    with open(out_dir / f"{scenario.slug}.log", "wb") as log, ExitStack() as stack:
        if scenario.contention:
            stub = bench.stub(scenario.contention.model, scenario.contention.instance)
            stack.enter_context(CpuContention(scenario.contention, stub))
        locust = subprocess.Popen(command, cwd=out_dir, stdout=log, stderr=subprocess.STDOUT)
        if scenario.failure:
            time.sleep(scenario.failure.at_s)
            bench.fail(scenario.failure)
        code = locust.wait(scenario.duration_s + 120)
    cpu_s = bench.cpu_seconds() - cpu_before
    try:
        calls = count_calls() - calls_before
    except Exception:  # an uncoded model with a killed instance: its statistics are gone
        calls = None
    samples_path = out_dir / f"{scenario.slug}_samples.csv"
    if code != 0 or not samples_path.is_file():
        raise RuntimeError(f"locust failed (exit code {code}) in scenario {scenario.slug}; see {out_dir / scenario.slug}.log")
    result = summarize(scenario, Samples.from_csv(samples_path), cpu_s, load_average, coded)
    result.member_calls = calls
    return result
