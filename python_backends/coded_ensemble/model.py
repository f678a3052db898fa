"""The coded ensemble: a Triton BLS model that adapts coded_serving.coordinator to Triton.

Triton's dynamic batcher hands ``execute`` the requests that arrived together; their queries
form coding groups, members are called with ``async_exec``, and every request gets exactly
one response: its outputs (``reconstructed`` says which were decoded) or an error.
"""

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from coded_serving.codes import make_code
from coded_serving.coordinator import Coordinator, GroupLayout, invalid_query_reason
from coded_serving.remote import RemoteMembers, is_remote
from coded_serving.repository import RECONSTRUCTED, ensemble_from_model_config

#: late members hold executor threads until they answer; too few threads starve new requests
MEMBER_THREADS = 64


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
        self._executor_ready = False

    async def execute(self, requests):
        if not self._executor_ready:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(MEMBER_THREADS))
            self._executor_ready = True
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
            outcome = await self.coordinator.infer(np.concatenate(queries), self._call_member)
            self.metrics.record(outcome, GroupLayout.for_queries(sum(sizes), self.coordinator.code.k))
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

    async def _call_member(self, member, batch):
        if is_remote(member):
            return await self.remote.infer(member, self.spec.input.name, batch, self.spec.worker_output.name)
        return await _infer(member, {self.spec.input.name: batch}, self.spec.worker_output.name)


class EnsembleMetrics:
    """Prometheus counters on Triton's metrics port (custom-metrics API). The batcher's queue
    delay, i.e. the time spent forming coding groups, is Triton's own nv_inference_queue_duration_us."""

    def __init__(self, model, members):
        self._families = {}  # a metric must not outlive its family

        def counter(name, description, **labels):
            if name not in self._families:
                self._families[name] = pb_utils.MetricFamily(
                    name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
            return self._families[name].Metric(labels={"model": model, **labels})

        self.queries = counter("coded_queries_total", "queries answered by a coded ensemble")
        self.reconstructed = counter("coded_reconstructed_total", "queries answered by a reconstruction")
        self.failed = counter("coded_query_errors_total", "queries answered with an error")
        self.groups = counter("coded_groups_total", "coding groups formed")
        self.padding = counter("coded_padded_slots_total", "slots of partial groups filled with copies")
        self.decode_us = counter("coded_decode_duration_us_total", "time spent decoding")
        self.member_errors = [counter("coded_member_errors_total", "member calls that failed", member=m) for m in members]
        self.member_late = [counter("coded_member_late_total", "member calls past the deadline", member=m)
                            for m in members]

    def record(self, outcome, layout):
        self.queries.increment(len(outcome.outputs))
        self.reconstructed.increment(int(outcome.reconstructed.sum()))
        self.failed.increment(len(outcome.errors))
        self.groups.increment(layout.slots.shape[0])
        self.padding.increment(layout.slots.size - layout.num_queries)
        self.decode_us.increment(outcome.decode_s * 1e6)
        for worker in outcome.worker_errors:
            self.member_errors[worker].increment(1)
        for worker in outcome.late_workers:
            self.member_late[worker].increment(1)


class ModelCodec:
    """Encode and decode through the standalone encoder and decoder models."""

    def __init__(self, spec, num_workers):
        self.spec = spec
        self.num_workers = num_workers

    async def encode(self, grouped):
        return await _infer(self.spec.encoder_model, {"queries": grouped}, "coded_queries")

    async def decode(self, results, available):
        mask = np.broadcast_to(available, (len(results), self.num_workers)).copy()
        return await _infer(self.spec.decoder_model, {"results": results, "available": mask}, "estimates")


async def _infer(model, inputs, output):
    request = pb_utils.InferenceRequest(
        model_name=model,
        requested_output_names=[output],
        inputs=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in inputs.items()],
    )
    response = await request.async_exec()
    if response.has_error():
        raise MemberError(f"{model}: {response.error().message()}")
    return pb_utils.get_output_tensor_by_name(response, output).as_numpy()


def _error(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
