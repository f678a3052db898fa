"""Members on other Triton servers, reached over gRPC: ``grpc://host:port/model``.

One asyncio gRPC client per server, kept open across requests. Reconnect backoff is capped
short, so a worker that comes back is used again within about a second, without a restart
of the frontend.
"""

from __future__ import annotations

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
    """Calls remote members; an unreachable server or a model error raises, like a local member."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._clients: dict[str, object] = {}

    def _client(self, url: str):
        if url not in self._clients:
            import tritonclient.grpc.aio as grpc_aio
            self._clients[url] = grpc_aio.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        return self._clients[url]

    async def infer(self, member: str, input_name: str, batch: np.ndarray, output_name: str) -> np.ndarray:
        import tritonclient.grpc.aio as grpc_aio
        remote = RemoteMember.parse(member)
        tensor = grpc_aio.InferInput(input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        response = await self._client(remote.url).infer(
            remote.model, [tensor], outputs=[grpc_aio.InferRequestedOutput(output_name)], client_timeout=self.timeout_s,
        )
        return response.as_numpy(output_name)
