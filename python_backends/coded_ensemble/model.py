"""The coded ensemble: a Triton BLS model that adapts coded_serving.coordinator to Triton.

Triton's dynamic batcher hands ``execute`` the requests that arrived together; their queries
form coding groups, members are called with blocking BLS ``exec`` on the coordinator's
threads, and every request gets exactly one response: its outputs (``reconstructed`` says
which were decoded) or an error.
"""

import json
import os
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

from coded_serving.codes import make_code
from coded_serving.coordinator import Coordinator, invalid_query_reason
from coded_serving.remote import RemoteMembers, is_remote
from coded_serving.repository import RECONSTRUCTED, ensemble_from_model_config

#: counters are sent to the server at most this often (each send is a round trip)
METRICS_FLUSH_S = 0.2


class MemberError(RuntimeError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        self.spec = ensemble_from_model_config(json.loads(args["model_config"]))
        code = make_code(self.spec.code, os.path.join(args["model_repository"], args["model_version"]))
        codec = ModelCodec(self.spec, code.num_workers) if self.spec.codec == "models" else None
        self.coordinator = Coordinator(
            code, self.spec.members, self.spec.deadline_ms / 1000, self.spec.timeout_ms / 1000, codec=codec,
            suspend_after=self.spec.suspend_after_misses, probe_interval_s=self.spec.probe_interval_ms / 1000,
        )
        self.remote = RemoteMembers(self.spec.timeout_ms / 1000)
        self.metrics = EnsembleMetrics(self.spec.name, self.spec.members)

    def execute(self, requests):
        queries, owners, responses = [], [], [None] * len(requests)
        for index, request in enumerate(requests):
            query = pb_utils.get_input_tensor_by_name(request, self.spec.input.name).as_numpy()
            reason = invalid_query_reason(query)
            if reason:
                responses[index] = _error(f"input '{self.spec.input.name}': {reason}")
            else:
                queries.append(query)
                owners.append(index)
        if queries:
            sizes = [len(q) for q in queries]
            outcome = self.coordinator.infer(np.concatenate(queries), self._call_member)
            self.metrics.record(outcome)
            offsets = np.cumsum([0] + sizes)
            for owner, begin, end in zip(owners, offsets[:-1], offsets[1:]):
                errors = [outcome.errors[q] for q in range(begin, end) if q in outcome.errors]
                if errors:
                    responses[owner] = _error(errors[0])
                    continue
                responses[owner] = pb_utils.InferenceResponse([
                    pb_utils.Tensor(self.spec.output.name, outcome.outputs[begin:end]),
                    pb_utils.Tensor(RECONSTRUCTED, outcome.reconstructed[begin:end, None]),
                ])
        return responses

    def finalize(self):
        self.metrics.close()

    def _call_member(self, member, batch):
        if is_remote(member):
            return self.remote.infer(member, self.spec.input.name, batch, self.spec.worker_output.name)
        return _infer(member, {self.spec.input.name: batch}, self.spec.worker_output.name)


class EnsembleMetrics:
    """Prometheus counters on Triton's metrics port (custom-metrics API). The batcher's queue
    delay, i.e. the time spent forming coding groups, is Triton's own nv_inference_queue_duration_us.

    Each increment is a round trip to the server process, too dear for every request: counts
    are added up here and sent every ``METRICS_FLUSH_S`` by a background thread.
    """

    def __init__(self, model, members):
        self._families = {}  # a metric must not outlive its family
        self._metrics = {}
        self._pending = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

        def counter(name, description, **labels):
            if name not in self._families:
                self._families[name] = pb_utils.MetricFamily(
                    name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
            key = (name, *labels.values())
            self._metrics[key] = self._families[name].Metric(labels={"model": model, **labels})
            return key

        self.queries = counter("coded_queries_total", "queries answered by a coded ensemble")
        self.reconstructed = counter("coded_reconstructed_total", "queries answered by a reconstruction")
        self.failed = counter("coded_query_errors_total", "queries answered with an error")
        self.groups = counter("coded_groups_total", "coding groups formed")
        self.padding = counter("coded_padded_slots_total", "slots of partial groups filled with copies")
        self.decode_us = counter("coded_decode_duration_us_total", "time spent decoding")
        self.member_errors = [counter("coded_member_errors_total", "member calls that failed", member=m) for m in members]
        self.member_late = [counter("coded_member_late_total", "member calls past the deadline", member=m)
                            for m in members]
        self._sender = threading.Thread(target=self._send_periodically, name="coded-metrics", daemon=True)
        self._sender.start()

    def record(self, outcome):
        counts = [
            (self.queries, len(outcome.outputs)),
            (self.reconstructed, int(outcome.reconstructed.sum())),
            (self.failed, len(outcome.errors)),
            (self.groups, outcome.groups),
            (self.padding, outcome.padded_slots),
            (self.decode_us, outcome.decode_s * 1e6),
            *((self.member_errors[worker], 1) for worker in outcome.worker_errors),
            *((self.member_late[worker], 1) for worker in outcome.late_workers),
        ]
        with self._lock:
            for key, count in counts:
                if count:
                    self._pending[key] = self._pending.get(key, 0) + count

    def send(self):
        with self._lock:
            pending, self._pending = self._pending, {}
        for key, count in pending.items():
            self._metrics[key].increment(count)

    def _send_periodically(self):
        while not self._stop.wait(METRICS_FLUSH_S):
            self.send()

    def close(self):
        self._stop.set()
        self._sender.join()
        self.send()


class ModelCodec:
    """Encode and decode through the standalone encoder and decoder models."""

    def __init__(self, spec, num_workers):
        self.spec = spec
        self.num_workers = num_workers

    def encode(self, grouped):
        return _infer(self.spec.encoder_model, {"queries": grouped}, "coded_queries")

    def decode(self, results, available):
        mask = np.broadcast_to(available, (len(results), self.num_workers)).copy()
        return _infer(self.spec.decoder_model, {"results": results, "available": mask}, "estimates")


def _infer(model, inputs, output):
    request = pb_utils.InferenceRequest(
        model_name=model,
        requested_output_names=[output],
        inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in inputs.items()],
    )
    response = request.exec()
    if response.has_error():
        raise MemberError(f"{model}: {response.error().message()}")
    return pb_utils.get_output_tensor_by_name(response, output).as_numpy()


def _error(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
