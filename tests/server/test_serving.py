"""The shipped repository on a real tritonserver: answers, failures, stragglers, bad input."""

from __future__ import annotations

import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from coded_serving.client import ModelClient
from coded_serving.codes import ParMAddition
from coded_serving.training.data import load_fashion_mnist
from coded_serving.runtime.faults import FaultInjection
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY
from coded_serving.benchmarks.overhead import inference_statistics

ENSEMBLE = "lenet5_parm"
MEMBERS = ["lenet5_parm_member_0", "lenet5_parm_member_1", "lenet5_parm_coded_0"]


@pytest.fixture(scope="module")
def images():
    return load_fashion_mnist().test.images[:64]


def onnx_logits(model_dir: str, batch: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(DEFAULT_REPOSITORY / model_dir / "1" / "model.onnx"))
    return session.run(["logits"], {"image": batch})[0]


def expected_reconstruction(batch: np.ndarray, missing_slot: int) -> np.ndarray:
    """ParM's decode of slot ``missing_slot`` of every pair, computed offline from the ONNX files."""
    pairs = batch.reshape(-1, 2, *batch.shape[1:])
    parity = onnx_logits("lenet5_parm_coded_0", ParMAddition(2).encode(pairs)[:, 0])
    other = onnx_logits("lenet5_parm_member_0", np.ascontiguousarray(pairs[:, 1 - missing_slot]))
    return parity - other


def assert_one_data_member_lost(result, batch: np.ndarray) -> None:
    """With one data member gone: each full coding group (queries 2i, 2i+1) has at most one query
    decoded (the other member runs one task of a group at a time: it takes the second only once it has
    answered the first), the first group exactly one, each equal to the offline decode
    F_P(x_q + x_p) - F(x_p); every other query is its exact original (a padded or lone query's copy
    answers it)."""
    n = len(batch)
    want = onnx_logits("lenet5", batch)
    flags = result.reconstructed
    full = n - n % 2 if n > 1 else 0
    per_group = flags[:full].reshape(-1, 2).sum(1)
    assert (per_group <= 1).all() and (full == 0 or per_group[0] == 1), per_group
    assert not flags[full:].any()
    np.testing.assert_allclose(result.outputs[~flags], want[~flags], atol=1e-5)
    decoded = np.nonzero(flags)[0]
    if len(decoded):
        partners = decoded ^ 1
        parity = onnx_logits("lenet5_parm_coded_0", batch[decoded] + batch[partners])
        np.testing.assert_allclose(result.outputs[decoded], parity - want[partners], atol=1e-4)


def healthy_latency_ms(url: str, batch: np.ndarray, count: int = 20) -> np.ndarray:
    with ModelClient(url, ENSEMBLE) as client:
        client.infer(batch)
        return np.array([client.infer(batch).latency_ms for _ in range(count)])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_healthy_ensemble_answers_exactly_like_the_deployed_model(server, patient_ensemble, images, protocol):
    url = server.config.http_url if protocol == "http" else server.config.grpc_url
    with ModelClient(url, ENSEMBLE, protocol) as coded, ModelClient(url, "lenet5", protocol) as direct:
        for batch in (images[:1], images[:7], images[:64]):
            got, want = coded.infer(batch), direct.infer(batch)
            np.testing.assert_allclose(got.outputs, want.outputs, atol=1e-5)
            assert got.reconstructed.shape == (len(batch),) and not got.reconstructed.any()
            assert want.reconstructed is None


def test_concurrent_requests_are_grouped_and_each_gets_its_own_answer(server, patient_ensemble, images):
    want = onnx_logits("lenet5", images)

    def one(index):
        with ModelClient(server.config.http_url, ENSEMBLE) as client:
            return index, client.infer(images[index:index + 1])

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    for index, result in results:
        np.testing.assert_allclose(result.outputs[0], want[index], atol=1e-5)


def test_lone_queries_take_turns_on_the_data_members_and_spare_the_parity(server, admin, patient_ensemble, images):
    def member_calls():
        counts = inference_statistics(server.config.http_url)
        return np.array([counts.get(member, (0,))[0] for member in MEMBERS])

    want = onnx_logits("lenet5", images[:12])
    with ModelClient(server.config.http_url, ENSEMBLE) as client:
        before = member_calls()
        for i in range(6):
            assert not client.infer(images[i:i + 1]).reconstructed.any()
        calls = member_calls() - before
        assert calls[0] > 0 and calls[1] > 0 and calls.sum() == 6 and calls[2] == 0
        admin.unload_model(MEMBERS[0])  # its turns go to the copy on member 1: originals, not decodes
        before = member_calls()
        for i in range(6, 12):
            result = client.infer(images[i:i + 1])
            assert not result.reconstructed.any()
            np.testing.assert_allclose(result.outputs[0], want[i], atol=1e-5)
        assert (member_calls() - before).tolist() == [0, 6, 0]


@pytest.mark.parametrize("missing_slot", [0, 1])
def test_unloaded_data_member_is_reconstructed(server, admin, images, missing_slot):
    admin.unload_model(MEMBERS[missing_slot])
    batch = images[:16]
    with ModelClient(server.config.http_url, ENSEMBLE) as client:
        result = client.infer(batch)
    slots = np.arange(16) % 2
    np.testing.assert_array_equal(result.reconstructed, slots == missing_slot)
    np.testing.assert_allclose(result.outputs[slots == missing_slot], expected_reconstruction(batch, missing_slot),
                               atol=1e-4)
    np.testing.assert_allclose(result.outputs[slots != missing_slot], onnx_logits("lenet5", batch)[slots != missing_slot],
                               atol=1e-5)


def test_straggler_past_the_deadline_is_answered_by_its_reconstruction(server, inject_faults, images):
    batch = images[:8]
    # the straggler's delay dwarfs the healthy latency measured here, so waiting for it cannot pass
    delay_ms = max(1000.0, 50 * float(np.quantile(healthy_latency_ms(server.config.http_url, batch), 0.9)))
    inject_faults(MEMBERS[0], FaultInjection(delay_ms=delay_ms))
    with ModelClient(server.config.http_url, ENSEMBLE) as client:
        result = client.infer(batch)
    assert result.latency_ms < delay_ms / 2  # the 10 ms deadline, not the member's delay
    np.testing.assert_array_equal(result.reconstructed, np.arange(8) % 2 == 0)
    np.testing.assert_allclose(result.outputs[::2], expected_reconstruction(batch, 0), atol=1e-4)


def test_erroring_member_loses_no_request(server, inject_faults, images):
    inject_faults(MEMBERS[1], FaultInjection(error_probability=1.0))

    def one(index):
        with ModelClient(server.config.http_url, ENSEMBLE) as client:
            return client.infer(images[2 * index:2 * index + 2])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(32)))
    assert len(results) == 32
    for index, result in enumerate(results):
        # a pair is one coding group: a query bound to the erroring member is decoded; the other
        # member may also answer both, one after the other
        assert result.reconstructed.sum() <= 1
        pair = images[2 * index:2 * index + 2]
        kept = ~result.reconstructed
        np.testing.assert_allclose(result.outputs[kept], onnx_logits("lenet5", pair)[kept], atol=1e-5)
        for slot in np.nonzero(result.reconstructed)[0]:
            np.testing.assert_allclose(result.outputs[slot], expected_reconstruction(pair, slot)[0], atol=1e-4)
    assert sum(r.reconstructed.sum() for r in results) > 0


def test_a_query_neither_copy_nor_code_can_recover_is_retried_on_the_other_member(server, inject_faults, images):
    """Data member 1 and the parity member both error: the code cannot decode a query member 1 had, so its
    original goes once more to member 0. Every answer is the exact original."""
    inject_faults(MEMBERS[1], FaultInjection(error_probability=1.0))
    inject_faults(MEMBERS[2], FaultInjection(error_probability=1.0))
    with ModelClient(server.config.http_url, ENSEMBLE) as client:
        for start in range(0, 16, 2):
            result = client.infer(images[start:start + 2])
            assert not result.reconstructed.any()
            np.testing.assert_allclose(result.outputs, onnx_logits("lenet5", images[start:start + 2]), atol=1e-5)


def test_a_query_neither_copy_nor_code_can_recover_while_its_member_hangs_is_hedged(server, inject_faults, images):
    """Data member 1 hangs and the parity member errors: the query member 1 holds goes once more to
    member 0 when its call is stuck past the deadline, rather than waiting for the hang."""
    batch = images[:2]
    delay_ms = max(1000.0, 50 * float(np.quantile(healthy_latency_ms(server.config.http_url, batch), 0.9)))
    inject_faults(MEMBERS[1], FaultInjection(delay_ms=delay_ms))
    inject_faults(MEMBERS[2], FaultInjection(error_probability=1.0))
    with ModelClient(server.config.http_url, ENSEMBLE) as client:
        result = client.infer(batch)
    assert result.latency_ms < delay_ms / 2
    assert not result.reconstructed.any()
    np.testing.assert_allclose(result.outputs, onnx_logits("lenet5", batch), atol=1e-5)


@pytest.mark.parametrize("model", [
    "lenet5", "lenet5_parm_encoder", "lenet5_parm_decoder", *MEMBERS,
])
def test_unloading_any_single_other_model_leaves_the_ensemble_answering(server, admin, patient_ensemble, images,
                                                                       model):
    """Exact originals, and decodes exactly where the unloaded model was the only holder of a query
    (the deadline is patient: nothing else is decoded)."""
    admin.unload_model(model)
    missing = model in MEMBERS[:2]
    with ModelClient(server.config.http_url, ENSEMBLE) as client:
        for batch in (images[:1], images[:5], images[:32]):
            result = client.infer(batch)
            if not missing:
                assert not result.reconstructed.any()
                np.testing.assert_allclose(result.outputs, onnx_logits("lenet5", batch), atol=1e-5)
            else:
                assert_one_data_member_lost(result, batch)


def _raw_infer(server, name, array, datatype="FP32", model=ENSEMBLE):
    client = http.InferenceServerClient(server.config.http_url)
    try:
        tensor = http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return client.infer(model, [tensor])
    finally:
        client.close()


@pytest.mark.parametrize("name, array, datatype, message", [
    ("pixels", np.zeros((1, 1, 28, 28), np.float32), "FP32", "unexpected inference input 'pixels'"),
    ("image", np.zeros((1, 1, 14, 14), np.float32), "FP32", "unexpected shape for input 'image'"),
    ("image", np.zeros((1, 1, 28, 28), np.float64), "FP64", "data-type is 'FP64', but model 'lenet5_parm' expects 'FP32'"),
    ("image", np.full((2, 1, 28, 28), np.nan, np.float32), "FP32", "input 'image': input contains NaN"),
    ("image", np.zeros((0, 1, 28, 28), np.float32), "FP32", "input byte size mismatch for input 'image'"),
    ("image", np.zeros((65, 1, 28, 28), np.float32), "FP32", "batch-size must be <= 64"),
])
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(server, images, name, array, datatype, message):
    with pytest.raises(InferenceServerException) as error:
        _raw_infer(server, name, array, datatype)
    assert message.lower() in str(error.value).lower()
    with ModelClient(server.config.http_url, ENSEMBLE) as client:
        assert client.infer(images[:2]).outputs.shape == (2, 10)


def test_unknown_model_is_named(server):
    with pytest.raises(InferenceServerException, match="nope"):
        _raw_infer(server, "image", np.zeros((1, 1, 28, 28), np.float32), model="nope")


def test_a_bad_request_in_a_dynamic_batch_fails_alone(server, admin, override_config, images):
    """NaN in some clients' requests must not fail the others grouped with them. The batcher holds the
    first request for a delay far longer than it takes to send them all, so all 8 share one execute
    (checked: the ensemble's execution count grows by one)."""
    spread_ms = healthy_latency_ms(server.config.http_url, images[:1]).max()
    delay_us = int(max(2000.0, 100 * spread_ms) * 1000)

    def hold_and_be_patient(config):
        config.parameters["deadline_ms"].string_value = "5000"
        config.dynamic_batching.max_queue_delay_microseconds = delay_us

    override_config(ENSEMBLE, hold_and_be_patient)
    want = onnx_logits("lenet5", images[:8])

    def executions():
        stats = admin.get_inference_statistics(ENSEMBLE)["model_stats"][0]
        return stats["execution_count"], stats["inference_count"]

    barrier = threading.Barrier(8)

    def one(index):
        batch = images[index:index + 1].copy()
        if index % 4 == 0:
            batch[0, 0, 0, 0] = np.nan
        client = http.InferenceServerClient(server.config.http_url)
        tensor = http.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        barrier.wait()
        try:
            return client.infer(ENSEMBLE, [tensor]).as_numpy("logits")
        except InferenceServerException as error:
            return str(error)
        finally:
            client.close()

    before = executions()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    after = executions()
    assert after[0] - before[0] == 1, "the 8 requests were not batched into one execute"
    for index, answer in enumerate(answers):
        if index % 4 == 0:
            assert "input contains NaN" in answer
        else:
            assert isinstance(answer, np.ndarray), answer
            np.testing.assert_allclose(answer[0], want[index], atol=1e-5)


def test_standalone_encoder_and_decoder_match_the_library(server, images):
    code = ParMAddition(2)
    client = grpc.InferenceServerClient(server.config.grpc_url)
    try:
        groups = images[:8].reshape(4, 2, 1, 28, 28)
        tensor = grpc.InferInput("queries", list(groups.shape), "FP32")
        tensor.set_data_from_numpy(groups)
        coded = client.infer("lenet5_parm_encoder", [tensor]).as_numpy("coded_queries")
        np.testing.assert_allclose(coded, code.encode(groups), rtol=1e-6)

        results = np.random.default_rng(0).normal(size=(4, 3, 10)).astype(np.float32)
        available = np.array([[True, False, True]] * 2 + [[False, True, True]] * 2)
        inputs = [grpc.InferInput("results", list(results.shape), "FP32"),
                  grpc.InferInput("available", list(available.shape), "BOOL")]
        inputs[0].set_data_from_numpy(results)
        inputs[1].set_data_from_numpy(available)
        estimates = client.infer("lenet5_parm_decoder", inputs).as_numpy("estimates")
        np.testing.assert_allclose(estimates[:2], code.decode(results[:2], available[0]), rtol=1e-5)
        np.testing.assert_allclose(estimates[2:], code.decode(results[2:], available[2]), rtol=1e-5)

        inputs[1].set_data_from_numpy(np.array([[True, False, False]] * 4))
        with pytest.raises(InferenceServerException, match="cannot decode"):
            client.infer("lenet5_parm_decoder", inputs)
    finally:
        client.close()


def test_metrics_count_queries_reconstructions_and_member_failures(server, admin, images):
    def scrape():
        with urllib.request.urlopen(server.config.metrics_url, timeout=10) as page:
            return page.read().decode()

    def value(page, name, **labels):
        wanted = {"model": ENSEMBLE, **labels}
        for line in page.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in wanted.items()):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name}{wanted} is not on the metrics page")

    def settled():
        """A page once the ensemble has sent every count (it sends them every 0.2 s)."""
        page, deadline = scrape(), time.monotonic() + 10
        while True:
            time.sleep(0.5)
            again = scrape()
            coded = [[line for line in p.splitlines() if line.startswith("coded_")] for p in (page, again)]
            if coded[0] == coded[1]:
                return again
            assert time.monotonic() < deadline, "the ensemble's counters keep changing"
            page = again

    before = settled()
    admin.unload_model(MEMBERS[0])
    with ModelClient(server.config.http_url, ENSEMBLE) as client:
        client.infer(images[:8])
    deadline = time.monotonic() + 10  # poll, bounded, until the ensemble has sent this request's counts
    while value(after := scrape(), "coded_queries_total") - value(before, "coded_queries_total") < 8:
        assert time.monotonic() < deadline, "the request's counts never reached the metrics page"
        time.sleep(0.1)
    after = settled()
    assert value(after, "coded_queries_total") - value(before, "coded_queries_total") == 8
    assert value(after, "coded_reconstructed_total") - value(before, "coded_reconstructed_total") == 4
    assert value(after, "coded_groups_total") - value(before, "coded_groups_total") == 4
    assert value(after, "coded_member_errors_total", member=MEMBERS[0]) > value(
        before, "coded_member_errors_total", member=MEMBERS[0])
    assert value(after, "coded_decode_duration_us_total") > value(before, "coded_decode_duration_us_total")


def test_shipped_coded_invnet_answers_and_reconstructs_a_lost_member(server, admin, override_parameters, images):
    """iresnet_invnet (k=4): with every member up, logits equal to the library's head over the members'
    features; with a data member unloaded (the first request on an idle server: each group's four
    originals go out at once, one per member), exactly one query per group is decoded, equal to the library's
    decode without that slot."""
    from coded_serving.codes import CodeSpec, make_code

    override_parameters("iresnet_invnet", {"deadline_ms": "5000"})  # no healthy member counts as late
    k, name = 4, "iresnet_invnet"
    batch = images[:8]
    code = make_code(CodeSpec("coded-invnet", k, {"head_file": "head.npz"}), DEFAULT_REPOSITORY / name / "1")

    def run(model: str, inputs: np.ndarray) -> np.ndarray:
        session = onnxruntime.InferenceSession(str(DEFAULT_REPOSITORY / model / "1" / "model.onnx"))
        return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(inputs)})[0]

    groups = batch.reshape(-1, k, *batch.shape[1:])
    features = run(f"{name}_member_0", batch).reshape(len(groups), k, -1)
    backup = run(f"{name}_coded_0", code.encode(groups)[:, 0])
    results = np.concatenate([features, backup[:, None]], axis=1)  # [groups, k + 1, features]

    with ModelClient(server.config.http_url, name) as client:
        healthy = client.infer(batch)
    assert not healthy.reconstructed.any()
    every_up = code.postprocess(code.decode(results, np.ones(k + 1, bool)))
    np.testing.assert_allclose(healthy.outputs, every_up.reshape(len(batch), -1), atol=1e-4)

    admin.unload_model(f"{name}_member_2")
    with ModelClient(server.config.http_url, name) as client:
        lost = client.infer(batch)
    flags = lost.reconstructed.reshape(len(groups), k)
    np.testing.assert_array_equal(flags.sum(axis=1), 1)  # late binding picks which slot the lost member held
    for group, slot in enumerate(flags.argmax(axis=1)):
        available = np.ones(k + 1, bool)
        available[slot] = False
        np.testing.assert_allclose(lost.outputs.reshape(len(groups), k, -1)[group],
                                   code.postprocess(code.decode(results[group:group + 1], available))[0], atol=1e-3)
