"""Members on other Triton servers, reached over gRPC: ``grpc://host:port/model``.

One gRPC client per server and member thread, kept open across requests. Reconnect backoff is capped
short, so a worker that comes back is used again within about a second, without a restart
of the frontend.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

SCHEME = "grpc://"
#: gRPC's default backoff grows to two minutes; a returning worker should be picked up at once
CHANNEL_ARGS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def is_remote(member: str) -> bool:
    return member.startswith(SCHEME)


@dataclass(frozen=True)
class RemoteMember:
    url: str
    model: str

    @classmethod
    def parse(cls, member: str) -> "RemoteMember":
        parsed = urlparse(member)
        model = parsed.path.strip("/")
        if parsed.scheme != "grpc" or not parsed.hostname or not parsed.port or not model or "/" in model:
            raise ValueError(f"remote member {member!r} is not of the form grpc://host:port/model")
        return cls(f"{parsed.hostname}:{parsed.port}", model)


class RemoteMembers:
    """Calls remote members; an unreachable server or a model error raises, like a local member.
    Calls block (they run on the coordinator's member threads): one client per thread and server."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._clients = threading.local()

    def _client(self, url: str):
        clients = self._clients.__dict__
        if url not in clients:
            import tritonclient.grpc as grpc_client
            clients[url] = grpc_client.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        return clients[url]

    def infer(self, member: str, input_name: str, batch: np.ndarray, output_name: str) -> np.ndarray:
        import tritonclient.grpc as grpc_client
        remote = RemoteMember.parse(member)
        tensor = grpc_client.InferInput(input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        response = self._client(remote.url).infer(
            remote.model, [tensor], outputs=[grpc_client.InferRequestedOutput(output_name)], client_timeout=self.timeout_s,
        )
        return response.as_numpy(output_name)
