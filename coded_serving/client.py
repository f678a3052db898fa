"""A small client over tritonclient (HTTP or gRPC) for any model of the repository.

Coded ensembles answer with the deployed model's outputs plus ``reconstructed``; plain models
do not have that output, and the client only asks for it where the model declares it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from coded_serving.specs import RECONSTRUCTED


@dataclass(frozen=True)
class InferenceResult:
    outputs: np.ndarray
    #: None for a model without the ``reconstructed`` output
    reconstructed: np.ndarray | None
    latency_ms: float


class ModelClient:
    def __init__(self, url: str, model: str, protocol: str = "http", timeout_s: float = 30.0):
        if protocol == "http":
            import tritonclient.http as triton
            self._client = triton.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        elif protocol == "grpc":
            import tritonclient.grpc as triton
            self._client = triton.InferenceServerClient(url)
        else:
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        self._triton = triton
        self.protocol = protocol
        self.model = model
        self.timeout_s = timeout_s
        metadata = self._client.get_model_metadata(model)
        metadata = metadata if isinstance(metadata, dict) else _grpc_to_dict(metadata)
        self.input = metadata["inputs"][0]
        outputs = [o["name"] for o in metadata["outputs"]]
        self.output = next(name for name in outputs if name != RECONSTRUCTED)
        self.has_reconstructed = RECONSTRUCTED in outputs

    def infer(self, batch: np.ndarray) -> InferenceResult:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        tensor = self._triton.InferInput(self.input["name"], list(batch.shape), self.input["datatype"])
        tensor.set_data_from_numpy(batch)
        names = [self.output] + ([RECONSTRUCTED] if self.has_reconstructed else [])
        requested = [self._triton.InferRequestedOutput(name) for name in names]
        extra = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        start = time.perf_counter()
        response = self._client.infer(self.model, [tensor], outputs=requested, **extra)
        latency_ms = (time.perf_counter() - start) * 1000
        reconstructed = response.as_numpy(RECONSTRUCTED).reshape(-1) if self.has_reconstructed else None
        return InferenceResult(response.as_numpy(self.output), reconstructed, latency_ms)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ModelClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _grpc_to_dict(metadata) -> dict:
    def tensors(items):
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]
    return {"inputs": tensors(metadata.inputs), "outputs": tensors(metadata.outputs)}


def load_retrying(admin, model: str, attempts: int, pause_s: float = 10.0) -> None:
    """Load ``model`` through ``admin`` (a tritonclient HTTP client), trying again: on a machine
    shared with other servers a stub can fail to start for a moment (seen: pthread_create refused
    while another server held 24k threads)."""
    from tritonclient.utils import InferenceServerException
    for attempt in range(attempts):
        try:
            return admin.load_model(model)
        except InferenceServerException:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s)
