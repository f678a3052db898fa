"""The logic of the remote-model proxy: a local model that forwards to a model on another Triton
server over gRPC, so a coded ensemble can have members there while its scheduler calls only
local models.

Reconnect backoff is capped short, so a worker that comes back is used again within about a
second, without a restart of the frontend.
"""

from __future__ import annotations

import numpy as np

#: gRPC's default backoff grows to two minutes; a returning worker should be picked up at once
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class RemoteModel:
    """Calls ``model`` at ``url`` (host:port); an unreachable server or a remote error raises."""

    def __init__(self, url: str, model: str, timeout_s: float):
        import tritonclient.grpc as grpc_client

        self.model = model
        self.timeout_s = timeout_s
        self._client = grpc_client.InferenceServerClient(url, channel_args=CHANNEL_ARGS)

    def infer(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        import tritonclient.grpc as grpc_client
        from tritonclient.utils import np_to_triton_dtype

        tensors = []
        for name, value in inputs.items():
            tensor = grpc_client.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        response = self._client.infer(self.model, tensors, client_timeout=self.timeout_s,
                                      outputs=[grpc_client.InferRequestedOutput(name) for name in output_names])
        return {name: response.as_numpy(name) for name in output_names}

    def close(self) -> None:
        self._client.close()
