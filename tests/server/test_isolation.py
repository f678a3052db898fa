"""Faults that must stay contained, on the real tritonserver: adversarial clients, a hung member,
64 clients under member churn and a double failure, a member slow on lone queries, and a failing
encoder model (codec="models")."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from coded_serving.benchmarks.soak import hung_member_repository, run_hung_member
from coded_serving.client import ModelClient
from coded_serving.codes import ParMAddition
from coded_serving.deployment.builder import default_repository_spec, onnx_files_of_default_repository
from coded_serving.deployment.config_writer import read_config, write_repository
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, ServerConfig, TritonServer, free_port, with_admin_key
from coded_serving.runtime.faults import FaultInjection
from coded_serving.specs import CodedEnsembleSpec, RepositorySpec
from coded_serving.training.data import load_fashion_mnist

ENSEMBLE = "lenet5_parm"
MEMBERS = ["lenet5_parm_member_0", "lenet5_parm_member_1", "lenet5_parm_coded_0"]
UNANSWERABLE = "no answer and no reconstruction possible"
#: finite pixels that drive LeNet-5's logits to NaN (3e38: the first convolution overflows)
#: or only the parity model's (1e38: the original stays finite, the parity does not)
ADVERSARIAL_PIXELS = (3e38, -3e38, 1e38, -1e38)


@pytest.fixture(scope="module")
def images():
    return load_fashion_mnist().test.images[:512]


@pytest.fixture(scope="module")
def want(images):
    return onnx_logits("lenet5", images)


def onnx_logits(model_dir: str, batch: np.ndarray) -> np.ndarray:
    import onnxruntime
    session = onnxruntime.InferenceSession(str(DEFAULT_REPOSITORY / model_dir / "1" / "model.onnx"))
    return session.run(["logits"], {"image": batch})[0]


def shipped_config(model: str):
    return read_config(DEFAULT_REPOSITORY / model / "config.pbtxt")


def timeout_ms() -> float:
    return float(shipped_config(ENSEMBLE).parameters["timeout_ms"].string_value)


def scrape(server) -> str:
    with urllib.request.urlopen(server.config.metrics_url, timeout=10) as page:
        return page.read().decode()


def metric(page: str, name: str, **labels) -> float:
    wanted = {"model": ENSEMBLE, **labels}
    for line in page.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in wanted.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{wanted} is not on the metrics page (see test_ensemble_metrics_survive_reloads)")


def settled_page(server, timeout_s: float = 15.0) -> str:
    """A metrics page once the ensemble has flushed every count (it sends them every 0.2 s):
    two pages 0.5 s apart with the same coded_* lines; bounded wait."""
    page, deadline = scrape(server), time.monotonic() + timeout_s
    while True:
        time.sleep(0.5)
        again = scrape(server)
        if [l for l in page.splitlines() if l.startswith("coded_")] == [
                l for l in again.splitlines() if l.startswith("coded_")]:
            return again
        assert time.monotonic() < deadline, "the ensemble's counters keep changing"
        page = again


def page_with_queries(server, before: str, queries: int, timeout_s: float = 15.0) -> str:
    """Poll (bounded) until ``coded_queries_total`` has grown by ``queries`` since ``before``."""
    deadline = time.monotonic() + timeout_s
    while True:
        page = scrape(server)
        grown = metric(page, "coded_queries_total") - metric(before, "coded_queries_total")
        if grown >= queries:
            assert grown == queries, f"{grown} queries counted, {queries} sent"
            return page
        assert time.monotonic() < deadline, f"only {grown} of {queries} queries counted"
        time.sleep(0.1)


def lone_latencies_ms(url: str, images: np.ndarray, count: int = 30) -> np.ndarray:
    with ModelClient(url, ENSEMBLE) as client:
        for i in range(5):
            client.infer(images[i:i + 1])
        return np.array([client.infer(images[i:i + 1]).latency_ms for i in range(count)])


# 1. isolation -----------------------------------------------------------------------------------

def test_adversarial_clients_fail_alone_and_count_against_no_member(server, patient_ensemble, images, want):
    """Finite pixels that make the model's outputs non-finite: those requests get a clear error (or an
    answer, when an original stayed finite); concurrent valid clients are all answered, exactly, and
    no member is blamed (no error, no late count, no suspension: no later reconstruction)."""
    url = server.config.http_url
    before = settled_page(server)
    valid_answers, valid_failures, adversarial = [], [], []

    def valid(seed):
        rng = np.random.default_rng(seed)
        with ModelClient(url, ENSEMBLE) as client:
            for _ in range(25):
                n = int(rng.integers(1, 9))
                start = int(rng.integers(0, len(images) - n))
                try:
                    valid_answers.append((start, client.infer(images[start:start + n])))
                except Exception as error:  # a valid request failed: collected, asserted empty
                    valid_failures.append(repr(error))

    def hostile(seed):
        rng = np.random.default_rng(seed)
        with ModelClient(url, ENSEMBLE) as client:
            for _ in range(25):
                n = int(rng.integers(1, 9))
                batch = images[:n].copy()
                rows = rng.random(n) < 0.7
                rows[int(rng.integers(0, n))] = True
                batch[rows] = rng.choice(ADVERSARIAL_PIXELS)
                try:
                    adversarial.append((n, client.infer(batch)))
                except InferenceServerException as error:
                    adversarial.append((n, str(error)))

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(f, seed) for seed, f in enumerate([valid, hostile] * 4)]:
            future.result()

    assert not valid_failures, valid_failures[:3]
    assert len(valid_answers) == 100
    for start, result in valid_answers:
        n = len(result.outputs)
        np.testing.assert_allclose(result.outputs, want[start:start + n], atol=1e-5)
        assert not result.reconstructed.any()  # deadline 5 s: only a suspended member would decode
    errors = [(n, outcome) for n, outcome in adversarial if isinstance(outcome, str)]
    assert len(adversarial) == 100 and errors, "no adversarial input drove the outputs non-finite"
    for n, outcome in adversarial:
        if isinstance(outcome, str):
            assert UNANSWERABLE in outcome and "returned non-finite values" in outcome, outcome
        else:
            assert outcome.outputs.shape == (n, 10) and np.isfinite(outcome.outputs).all()

    sent = sum(len(r.outputs) for _, r in valid_answers) + sum(n for n, _ in adversarial)
    after = page_with_queries(server, before, sent)
    failed_queries = metric(after, "coded_query_errors_total") - metric(before, "coded_query_errors_total")
    assert len(errors) <= failed_queries <= sum(n for n, _ in errors)
    for member in MEMBERS:
        for counter in ("coded_member_errors_total", "coded_member_late_total"):
            assert metric(after, counter, member=member) == metric(before, counter, member=member), (counter, member)
    with ModelClient(url, ENSEMBLE) as client:  # no member is suspended: nothing is decoded
        for start in range(0, 64, 8):
            result = client.infer(images[start:start + 8])
            assert not result.reconstructed.any()
            np.testing.assert_allclose(result.outputs, want[start:start + 8], atol=1e-5)


# 2. hung member ---------------------------------------------------------------------------------

def test_hung_member_at_20_per_second_loses_nothing_and_keeps_threads_and_memory_bounded(tmp_path, images):
    """Member 0 sleeps an hour in every execute. 20 req/s for 25 s, batches of 1..4: every request is
    answered within timeout_ms (decoded, or by a copy on the other data member: a lone query's, or a
    hedge when that member's first, cold call is late too), and the server's threads and memory stop
    growing once the breaker has suspended the member."""
    repository = hung_member_repository(tmp_path, MEMBERS[0])
    config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(config, tmp_path / "server.log") as server:
        result = run_hung_member(config.http_url, server.pid, ENSEMBLE, images, seconds=25, rate=20)
    assert not result.errors, result.errors[:3]
    assert result.answered == result.sent == 500
    assert max(result.latencies_ms) < timeout_ms(), max(result.latencies_ms)
    # bounded: past the first 5 s, no growth beyond a few threads and 10% of memory
    settled = [s for s in result.samples if s[0] >= 5]
    assert len(settled) >= 15
    _, rss0, threads0 = settled[0]
    assert max(s[2] for s in settled) <= threads0 + 4, result.samples
    assert max(s[1] for s in settled) <= 1.10 * rss0, result.samples


# 3. exactly one response per request ------------------------------------------------------------

def test_64_clients_under_churn_and_a_double_failure_get_exactly_one_response_each(server, admin, override_parameters,
                                                                                  images, want):
    """64 clients, batches of 1..8, while members are unloaded and loaded back one at a time, then two
    members of the group are down at once: every request gets exactly one response (Triton's count of
    the ensemble's responses grows by the number of requests); every answer is the request's own;
    errors are only the clear 'no answer and no reconstruction possible', only while two members are
    down, and come within timeout_ms plus a margin measured on the healthy run. The ensemble may hold
    64 x 8 queries, so its overload rejection (tested elsewhere) stays out of this test."""
    override_parameters(ENSEMBLE, {"max_in_flight": str(64 * 8)})
    url = server.config.http_url
    records = []  # (start, end, n, first row, result or error text)
    lock, stop = threading.Lock(), threading.Event()

    def statistics():
        stats = admin.get_inference_statistics(ENSEMBLE)["model_stats"][0]["inference_stats"]
        return stats["success"]["count"] + stats["fail"]["count"]

    def client_loop(seed):
        rng = random.Random(seed)
        with ModelClient(url, ENSEMBLE) as client:
            while not stop.is_set():
                n = rng.randint(1, 8)
                first = rng.randrange(len(images) - n)
                start = time.monotonic()
                try:
                    outcome = client.infer(images[first:first + n])
                except InferenceServerException as error:
                    outcome = str(error)
                with lock:
                    records.append((start, time.monotonic(), n, first, outcome))

    def wait_for(count, since, what, timeout_s=60.0):
        deadline = time.monotonic() + timeout_s
        while sum(1 for r in list(records) if r[0] >= since) < count:
            assert time.monotonic() < deadline, f"fewer than {count} responses {what} in {timeout_s:.0f} s"
            time.sleep(0.05)

    counted_before = statistics()
    threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(64)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        wait_for(256, began, "while healthy")
        healthy_end = time.monotonic()
        chooser = random.Random(0)
        for _ in range(4):  # churn: one member down at a time
            member = chooser.choice(MEMBERS)
            admin.unload_model(member)
            wait_for(64, time.monotonic(), f"with {member} unloaded")
            admin.load_model(member)
            wait_for(64, time.monotonic(), f"after {member} came back")
        double_start = time.monotonic()  # both data members: a failed original has nowhere to go once more
        admin.unload_model(MEMBERS[0])
        admin.unload_model(MEMBERS[1])
        wait_for(128, time.monotonic(), "with two members unloaded")
        admin.load_model(MEMBERS[0])
        admin.load_model(MEMBERS[1])
        double_end = time.monotonic()
        wait_for(128, double_end, "after both came back")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a client never got its response"

    healthy = np.array([(end - start) * 1000 for start, end, _, _, o in records if end <= healthy_end])
    healthy_errors = [o for _, e, _, _, o in records if e <= healthy_end and isinstance(o, str)]
    assert not healthy_errors, (len(healthy_errors), healthy_errors[:3])
    margin_ms = 10 * float(np.quantile(healthy, 0.99))
    errors = [(s, e, o) for s, e, _, _, o in records if isinstance(o, str)]
    assert errors, "two members down, yet no request was unanswerable"
    for start, end, message in errors:
        assert UNANSWERABLE in message, message
        assert start < double_end and end > double_start, f"unanswerable outside the double failure: {message}"
    slowest = max((end - start) * 1000 for start, end, _, _, _ in records)
    assert slowest < timeout_ms() + margin_ms, (slowest, margin_ms)
    for _, _, n, first, outcome in records:
        if isinstance(outcome, str):
            continue
        assert outcome.outputs.shape == (n, 10) and np.isfinite(outcome.outputs).all()
        originals = ~outcome.reconstructed
        np.testing.assert_allclose(outcome.outputs[originals], want[first:first + n][originals], atol=1e-5)
    deadline = time.monotonic() + 15
    while statistics() - counted_before < len(records) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert statistics() - counted_before == len(records)


# 4. circuit breaker on lone queries -------------------------------------------------------------

def test_member_slow_on_lone_queries_is_suspended_then_called_only_by_probes(server, inject_faults, images, want):
    """Lone-query traffic (one data member per query, its copy in reserve): a data member slower than
    the deadline is counted late, suspended after 3 misses, and from then on called only by the probe
    (one a second), while its turns go straight to the copy: originals, no waiting."""
    url = server.config.http_url
    healthy = lone_latencies_ms(url, images)
    deadline_ms = max(float(shipped_config(ENSEMBLE).parameters["deadline_ms"].string_value),
                      5 * float(np.quantile(healthy, 0.9)))
    delay_ms = 3 * deadline_ms  # late every time, yet back soon enough to be called again and again
    inject_faults(MEMBERS[0], FaultInjection(delay_ms=delay_ms))
    probe_s = float(shipped_config(ENSEMBLE).parameters["probe_interval_ms"].string_value) / 1000
    late = lambda page: metric(page, "coded_member_late_total", member=MEMBERS[0])  # noqa: E731

    start = settled_page(server)
    with ModelClient(url, ENSEMBLE) as client:
        give_up, i = time.monotonic() + 60, 0
        while late(scrape(server)) - late(start) < 3:  # until suspended: 3 consecutive late turns
            assert time.monotonic() < give_up, "member 0 was never counted late 3 times"
            result = client.infer(images[i % 256:i % 256 + 1])
            assert not result.reconstructed.any()
            i += 1
        before = settled_page(server)
        window_s, sent, began = 4 * probe_s, 0, time.monotonic()
        while time.monotonic() - began < window_s:
            i = sent % 256
            result = client.infer(images[i:i + 1])
            np.testing.assert_allclose(result.outputs[0], want[i], atol=1e-5)
            assert not result.reconstructed.any()
            sent += 1
    after = page_with_queries(server, before, sent)
    probes = late(after) - late(before)
    allowed = window_s / probe_s + 2
    assert 1 <= probes <= allowed, probes
    # without the breaker, member 0 would take every other turn it is free for: far more calls
    assert min(sent / 2, window_s * 1000 / delay_ms) > 2 * allowed, (sent, delay_ms)
    assert metric(after, "coded_member_late_total", member=MEMBERS[1]) - metric(
        before, "coded_member_late_total", member=MEMBERS[1]) < sent / 10


# metrics across reloads --------------------------------------------------------------------------

def test_ensemble_metrics_survive_reloads(tmp_path, images):
    """Every config override reloads the ensemble; its coded_* counters must stay on the metrics page
    (the tests above read them after such reloads). Seen failing: after about one reload in ten (not on every run),
    every coded_* line of the ensemble is gone until the next reload, while it keeps serving; or the
    server aborts (heap corruption) or segfaults. On its own server, so a crash takes no other test down."""
    config = ServerConfig(DEFAULT_REPOSITORY, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(config, tmp_path / "server.log") as server:
        admin = with_admin_key(http.InferenceServerClient(config.http_url, network_timeout=20), config.http_url)
        try:
            reload_and_check_metrics(server, admin, images)
        finally:
            admin.close()


def reload_and_check_metrics(server, admin, images):
    import json
    from google.protobuf import json_format
    for n in range(40):  # seen failing at reloads 1, 3, 10 and 18: one reload in ten or so
        config = shipped_config(ENSEMBLE)
        config.parameters["deadline_ms"].string_value = f"{10 + n}"
        admin.unload_model(ENSEMBLE)  # as the admin fixture's load_with_config does
        admin.load_model(ENSEMBLE, config=json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)))
        with ModelClient(server.config.http_url, ENSEMBLE) as client:
            client.infer(images[:8])
        deadline, page = time.monotonic() + 5, scrape(server)
        while f'coded_queries_total{{model="{ENSEMBLE}"}}' not in page and time.monotonic() < deadline:
            time.sleep(0.1)
            page = scrape(server)
        assert f'coded_queries_total{{model="{ENSEMBLE}"}}' in page, f"coded_* metrics gone after reload {n + 1}"
        assert metric(page, "coded_member_late_total", member=MEMBERS[0]) >= 0


# 5. codec="models": a failing encoder fails no original -----------------------------------------

@pytest.fixture(scope="module")
def models_codec_server(tmp_path_factory):
    """The default repository with codec="models" (the ensemble calls the encoder and decoder models)
    and a deadline no loaded machine misses."""
    tmp = tmp_path_factory.mktemp("models-codec")
    spec = default_repository_spec(onnx_files_of_default_repository(DEFAULT_REPOSITORY, tmp / "onnx"))
    models = tuple(dataclasses.replace(m, codec="models", deadline_ms=5000) if isinstance(m, CodedEnsembleSpec) else m
                   for m in spec.models)
    repository = write_repository(RepositorySpec(models), tmp / "repository")
    config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(config, tmp / "server.log") as triton:
        yield triton


def test_models_codec_failing_encoder_fails_no_original(models_codec_server, images, want):
    url = models_codec_server.config.http_url
    admin = with_admin_key(http.InferenceServerClient(url), url)
    encoder, decoder = f"{ENSEMBLE}_encoder", f"{ENSEMBLE}_decoder"
    pairs = images[:8].reshape(4, 2, 1, 28, 28)
    reconstruction = (onnx_logits("lenet5_parm_coded_0", ParMAddition(2).encode(pairs)[:, 0])
                      - onnx_logits("lenet5", np.ascontiguousarray(pairs[:, 1])))
    try:
        with ModelClient(url, ENSEMBLE) as client:
            admin.unload_model(encoder)
            for n in (1, 5, 8):  # originals, exact, none decoded
                result = client.infer(images[:n])
                np.testing.assert_allclose(result.outputs, want[:n], atol=1e-5)
                assert not result.reconstructed.any()
            admin.unload_model(MEMBERS[0])  # member 0's queries cannot be decoded: they go once more, to member 1
            result = client.infer(images[:8])
            np.testing.assert_allclose(result.outputs, want[:8], atol=1e-5)
            assert not result.reconstructed.any()
            admin.unload_model(MEMBERS[1])  # no data member left: unanswerable, the encoder named
            with pytest.raises(InferenceServerException, match=UNANSWERABLE) as error:
                client.infer(images[:8])
            assert encoder in str(error.value)
            admin.load_model(MEMBERS[1])
            lone = client.infer(images[:1])  # a lone query's copy on member 1: an original
            np.testing.assert_allclose(lone.outputs, want[:1], atol=1e-5)
            assert not lone.reconstructed.any()

            admin.load_model(encoder)  # the encoder back: member 0's queries decoded
            result = client.infer(images[:8])
            np.testing.assert_array_equal(result.reconstructed, np.arange(8) % 2 == 0)
            np.testing.assert_allclose(result.outputs[::2], reconstruction, atol=1e-4)
            np.testing.assert_allclose(result.outputs[1::2], want[1:8:2], atol=1e-5)

            admin.unload_model(decoder)  # a failing decoder: the decodes fail, naming it; originals unharmed
            with pytest.raises(InferenceServerException, match=decoder):
                client.infer(images[:8])
            admin.load_model(MEMBERS[0])
            result = client.infer(images[:8])
            np.testing.assert_allclose(result.outputs, want[:8], atol=1e-5)
            assert not result.reconstructed.any()
    finally:
        admin.close()
