"""The C++ coded_ensemble backend against the real tritonserver: answers, reconstructions,
isolation of a bad request, concurrency and statistics. CODED_SCHEDULER_ASAN=1 runs the same
tests on an AddressSanitizer build (reports land in the build folder, asan.*)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from coded_serving import scheduler
from coded_serving.runtime.faults import FaultInjection

try:
    from coded_serving.deployment import launcher
except ImportError:  # before the package's restructuring
    from coded_serving import launcher

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
DEPLOYED = REPOSITORY / "lenet5" / "1" / "model.onnx"
PARITY = REPOSITORY / "lenet5_parm_coded_0" / "1" / "model.onnx"
MEMBERS = ("sched_member_0", "sched_member_1", "sched_parity")
ASAN = os.environ.get("CODED_SCHEDULER_ASAN") == "1"


EVERY = tuple((f"worker_{w}", f"worker_{w}_parity") for w in range(3))  # every worker: deployed + parity
#: every-worker members whose deployed model takes a long emulated execute (the join-rule test)
SLOW_EVERY = tuple((f"slow_worker_{w}", f"slow_worker_{w}_parity") for w in range(3))
SLOW_SERVICE_S = 1.0


def onnx_config(name: str, service_ms: float = 0.0) -> str:
    injected = FaultInjection(service_ms=service_ms).to_parameters() if service_ms else {}
    parameters = "".join(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'
                         for key, value in injected.items())
    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: 64
default_model_filename: "model.onnx"
input {{ name: "image" data_type: TYPE_FP32 dims: [1, 28, 28] }}
output {{ name: "logits" data_type: TYPE_FP32 dims: [10] }}
instance_group {{ count: 1 }}
dynamic_batching {{ }}
{parameters}"""


def ensemble_config(name: str, queue_delay_us: int = 0, **overrides: str) -> str:
    """A ParM ensemble over MEMBERS; its deadline is long, so that on a loaded machine answers
    stay exact unless a member fails."""
    parameters = {
        "members": ",".join(MEMBERS), "k": "2", "systematic": "true", "min_available": "2",
        "member_output": '{"name": "logits", "dtype": "FP32", "dims": [10]}',
        "encoder": "sum", "decoder": "subtract", "parity_weight": "1", "postprocess": "none",
        "deadline_ms": "2000", "deadline_min_ms": "2000", "timeout_ms": "5000", "suspend_after_misses": "3", "probe_interval_ms": "1000",
        "max_in_flight": "1024", **overrides,
    }
    text = "".join(
        f'parameters {{ key: "{key}" value {{ string_value: {value!r} }} }}\n'.replace("'", '"')
        if '"' not in value else f"parameters {{ key: \"{key}\" value {{ string_value: '{value}' }} }}\n"
        for key, value in parameters.items()
    )
    return f"""name: "{name}"
backend: "coded_ensemble"
max_batch_size: 64
input {{ name: "image" data_type: TYPE_FP32 dims: [1, 28, 28] }}
output {{ name: "logits" data_type: TYPE_FP32 dims: [10] }}
output {{ name: "reconstructed" data_type: TYPE_BOOL dims: [1] }}
instance_group {{ count: 2 kind: KIND_CPU }}
dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}
{text}"""


def write_model(repository: Path, name: str, config: str, onnx: Path | None = None) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(config)
    if onnx:
        shutil.copyfile(onnx, repository / name / "1" / "model.onnx")


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    return scheduler.compile_backend(tmp_path_factory.mktemp("scheduler_build"), sanitize=ASAN)


@pytest.fixture(scope="module")
def server(tmp_path_factory, library):
    repository = tmp_path_factory.mktemp("scheduler_repository")
    write_model(repository, "lenet5", onnx_config("lenet5"), DEPLOYED)
    write_model(repository, MEMBERS[0], onnx_config(MEMBERS[0]), DEPLOYED)
    write_model(repository, MEMBERS[1], onnx_config(MEMBERS[1]), DEPLOYED)
    write_model(repository, MEMBERS[2], onnx_config(MEMBERS[2]), PARITY)
    write_model(repository, "parm", ensemble_config("parm"))
    write_model(repository, "parm_batched", ensemble_config("parm_batched", queue_delay_us=20000))
    write_model(repository, "parm_stream", ensemble_config("parm_stream", group_close_us="50000"))
    for w, (deployed, parity) in enumerate(EVERY):
        write_model(repository, deployed, onnx_config(deployed), DEPLOYED)
        write_model(repository, parity, onnx_config(parity), PARITY)
    write_model(repository, "parm_every", ensemble_config(
        "parm_every", members=",".join(d for d, _ in EVERY), worker_models=",".join(f"{d}:{p}" for d, p in EVERY)))
    for deployed, parity in SLOW_EVERY:
        write_model(repository, deployed, onnx_config(deployed, service_ms=SLOW_SERVICE_S * 1000), DEPLOYED)
        write_model(repository, parity, onnx_config(parity), PARITY)
    write_model(repository, "parm_slow_every", ensemble_config(
        "parm_slow_every", members=",".join(d for d, _ in SLOW_EVERY),
        worker_models=",".join(f"{d}:{p}" for d, p in SLOW_EVERY)))

    original_build, original_env = launcher.build_backend_directory, launcher.server_environment

    def build_backend_directory(target: Path) -> Path:
        target = original_build(target)
        (target / "coded_ensemble").mkdir(exist_ok=True)
        (target / "coded_ensemble" / "model.py").unlink(missing_ok=True)  # the old Python coordinator
        shutil.copyfile(library, target / "coded_ensemble" / library.name)
        return target

    def server_environment() -> dict[str, str]:
        env = original_env()
        if ASAN:  # tritonserver is not instrumented: the runtime must come first
            libasan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout
            env["LD_PRELOAD"] = libasan.strip()
            env["ASAN_OPTIONS"] = f"detect_leaks=0:log_path={library.parent / 'asan'}"
        return env

    config = launcher.ServerConfig(model_repository=repository, http_port=launcher.free_port(),
                                   grpc_port=launcher.free_port(), metrics_port=launcher.free_port())
    launcher.build_backend_directory, launcher.server_environment = build_backend_directory, server_environment
    try:
        with launcher.TritonServer(config, log_path=library.parent / "server.log") as running:
            yield running
    finally:
        launcher.build_backend_directory, launcher.server_environment = original_build, original_env


@pytest.fixture
def client(server):
    """A client that may also load and unload models (the launcher may restrict that to a key)."""
    with http.InferenceServerClient(server.config.http_url, network_timeout=30) as c:
        admin = getattr(launcher, "with_admin_key", None)
        yield admin(c, server.config.http_url) if admin else c


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 28, 28), dtype=np.float32)


def infer(client, model: str, batch: np.ndarray):
    image = http.InferInput("image", list(batch.shape), "FP32")
    image.set_data_from_numpy(batch)
    outputs = [http.InferRequestedOutput("logits")]
    if model != "lenet5":
        outputs.append(http.InferRequestedOutput("reconstructed"))
    result = client.infer(model, [image], outputs=outputs)
    flags = result.as_numpy("reconstructed") if model != "lenet5" else None
    return result.as_numpy("logits"), flags


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": batch})[0]


@pytest.mark.parametrize("batch_size", [1, 4, 3])
def test_coded_answers_equal_the_deployed_model(client, batch_size):
    batch = images(batch_size, seed=batch_size)
    logits, flags = infer(client, "parm", batch)
    expected, _ = infer(client, "lenet5", batch)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert flags.shape == (batch_size, 1) and not flags.any()


def test_unloaded_data_member_is_reconstructed(server, client):
    batch = images(2, seed=7)
    client.unload_model(MEMBERS[0])
    try:
        logits, flags = infer(client, "parm", batch)
        lone, lone_flags = infer(client, "parm", batch[:1])
    finally:
        client.load_model(MEMBERS[0])
    expected = run_onnx(PARITY, batch[:1] + batch[1:]) - run_onnx(DEPLOYED, batch[1:])
    np.testing.assert_allclose(logits[0], expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[1], run_onnx(DEPLOYED, batch[1:])[0], rtol=1e-5, atol=1e-5)
    assert flags[:, 0].tolist() == [True, False]
    # a lone query goes to the other data member, which holds its copy
    np.testing.assert_allclose(lone, run_onnx(DEPLOYED, batch[:1]), rtol=1e-5, atol=1e-5)
    assert not lone_flags.any()


def test_bad_request_in_a_batch_fails_alone(server):
    bad = images(1, seed=3)
    bad[0, 0, 0, 0] = np.nan
    good = [images(2, seed=10 + i) for i in range(3)]
    results, errors = {}, {}

    def send(key, batch):
        with http.InferenceServerClient(server.config.http_url) as c:
            try:
                results[key] = infer(c, "parm_batched", batch)[0]
            except InferenceServerException as error:
                errors[key] = str(error)

    threads = [threading.Thread(target=send, args=("bad", bad))]
    threads += [threading.Thread(target=send, args=(i, batch)) for i, batch in enumerate(good)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(errors) == {"bad"} and "NaN or infinite" in errors["bad"] and "'image'" in errors["bad"]
    with http.InferenceServerClient(server.config.http_url) as c:
        for i, batch in enumerate(good):
            np.testing.assert_allclose(results[i], infer(c, "lenet5", batch)[0], rtol=1e-5, atol=1e-5)


def test_every_request_gets_one_response_under_16_clients(server):
    answers, failures = [], []

    def client_loop(seed):
        with http.InferenceServerClient(server.config.http_url, network_timeout=60) as c:
            for i in range(12):
                batch = images(1 + (seed + i) % 3, seed=seed * 100 + i)
                try:
                    logits, _ = infer(c, "parm_batched" if i % 2 else "parm", batch)
                    answers.append((batch, logits))
                except InferenceServerException as error:
                    failures.append(str(error))

    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(answers) == 16 * 12
    for batch, logits in answers[:20]:
        np.testing.assert_allclose(logits, run_onnx(DEPLOYED, batch), rtol=1e-5, atol=1e-5)


def test_statistics_and_metrics_count_the_ensemble(server, client):
    before = client.get_inference_statistics("parm")["model_stats"][0]
    for _ in range(5):
        infer(client, "parm", images(2))
    # read at once: the backend reports a request's statistics before sending its response
    after = client.get_inference_statistics("parm")["model_stats"][0]
    assert int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"]) == 5
    assert int(after["inference_count"]) - int(before["inference_count"]) == 10
    success = after["inference_stats"]["success"]
    assert int(success["count"]) >= 5 and int(success["ns"]) > 0
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    with urllib.request.urlopen(server.config.metrics_url) as response:
        metrics = response.read().decode()
    assert 'coded_queries_total{model="parm"}' in metrics
    assert 'coded_member_errors_total{member="sched_member_0",model="parm"}' in metrics


def test_unknown_parameter_value_fails_the_load(server, client):
    model = Path(server.config.model_repository) / "parm_bad"
    write_model(model.parent, "parm_bad", ensemble_config("parm_bad", min_available="nine"))
    with pytest.raises(InferenceServerException, match="min_available"):
        client.load_model("parm_bad")


def metric(server, name: str, model: str) -> float:
    with urllib.request.urlopen(server.config.metrics_url) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f'{name}{{model="{model}"}}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_concurrent_batch_1_clients_form_groups_across_requests(server):
    """Queries from different requests (and executes) share coding groups; answers stay exact."""
    queries_before, groups_before = (metric(server, n, "parm_stream") for n in ("coded_queries_total", "coded_groups_total"))
    answers, failures = [], []

    def client_loop(seed):
        with http.InferenceServerClient(server.config.http_url, network_timeout=60) as c:
            for i in range(10):
                batch = images(1, seed=seed * 100 + i)
                try:
                    answers.append((batch, *infer(c, "parm_stream", batch)))
                except InferenceServerException as error:
                    failures.append(str(error))

    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(answers) == 80
    batches = np.concatenate([batch for batch, _, _ in answers])
    np.testing.assert_allclose(np.concatenate([logits for _, logits, _ in answers]), run_onnx(DEPLOYED, batches),
                               rtol=1e-5, atol=1e-5)
    assert not any(flags.any() for _, _, flags in answers)
    queries = metric(server, "coded_queries_total", "parm_stream") - queries_before
    groups = metric(server, "coded_groups_total", "parm_stream") - groups_before
    assert queries == 80 and groups < 70, f"{groups} groups for {queries} batch-1 queries"


def test_every_worker_topology_serves_and_reconstructs_without_a_worker(server, client):
    """Each worker hosts the deployed and the parity model; with worker 0 gone (both its models
    unloaded) every request is still answered: exactly, or by a reconstruction from the others."""
    batches = [images(n, seed=40 + n) for n in (1, 2, 4, 3, 2)]
    for batch in batches:  # all healthy: exact
        logits, flags = infer(client, "parm_every", batch)
        np.testing.assert_allclose(logits, run_onnx(DEPLOYED, batch), rtol=1e-5, atol=1e-5)
        assert not flags.any()
    for model in EVERY[0]:
        client.unload_model(model)
    try:
        for _ in range(3):
            for batch in batches:
                logits, flags = infer(client, "parm_every", batch)
                exact = run_onnx(DEPLOYED, batch)
                for i in np.flatnonzero(~flags[:, 0]):
                    np.testing.assert_allclose(logits[i], exact[i], rtol=1e-5, atol=1e-5)
                for i in np.flatnonzero(flags[:, 0]):  # decoded from its pair's original and the parity
                    j = i + 1 if i % 2 == 0 else i - 1
                    np.testing.assert_allclose(
                        logits[i], run_onnx(PARITY, batch[i:i + 1] + batch[j:j + 1])[0] - exact[j], rtol=1e-4, atol=1e-4)
    finally:
        for model in EVERY[0]:
            client.load_model(model)


def test_queries_waiting_together_for_a_busy_worker_leave_in_one_call(server):
    """Three queries that arrive while every worker is busy each open their own coding group (none
    joins a group whose original still waits), so the first worker that frees runs all three in one
    call; in one group, two of them could not share that worker and would wait for a second one."""
    groups_before = metric(server, "coded_groups_total", "parm_slow_every")
    answers, failures = {}, []

    def send(key):
        with http.InferenceServerClient(server.config.http_url, network_timeout=60) as c:
            try:
                answers[key] = infer(c, "parm_slow_every", images(1, seed=key))
            except InferenceServerException as error:
                failures.append(str(error))

    def start(key):
        thread = threading.Thread(target=send, args=(key,))
        thread.start()
        return thread

    # one query per worker, a fifth of an execute apart, so that the workers free one at a time
    threads = []
    for key in range(3):
        threads.append(start(key))
        time.sleep(SLOW_SERVICE_S / 5)
    # three more, one execute each (one client request per ensemble execute), long before a worker frees
    for key in range(3, 6):
        threads.append(start(key))
        time.sleep(SLOW_SERVICE_S / 30)
    for thread in threads:
        thread.join()
    assert failures == [] and sorted(answers) == list(range(6))
    for key, (logits, flags) in answers.items():
        np.testing.assert_allclose(logits, run_onnx(DEPLOYED, images(1, seed=key)), rtol=1e-5, atol=1e-5)
        assert not flags.any()
    assert metric(server, "coded_groups_total", "parm_slow_every") - groups_before == 6
    with http.InferenceServerClient(server.config.http_url) as c:
        executions = {}  # rows per execute -> how many, over the three deployed models
        for deployed, _ in SLOW_EVERY:
            for stats in c.get_inference_statistics(deployed)["model_stats"][0]["batch_stats"]:
                size = int(stats["batch_size"])
                executions[size] = executions.get(size, 0) + int(stats["compute_infer"]["count"])
    assert executions == {1: 3, 3: 1}, f"executes by rows: {executions}"
