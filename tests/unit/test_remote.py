"""The remote-model proxy's logic: a member on a server that is not there fails at once, clearly."""

import socket
import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from coded_serving.runtime.remote import RemoteModel


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_an_error_well_within_the_timeout():
    remote = RemoteModel(f"127.0.0.1:{closed_port()}", "lenet5", timeout_s=30.0)
    start = time.monotonic()
    with pytest.raises(InferenceServerException, match="(?i)unavailable|connect"):
        remote.infer({"image": np.zeros((1, 1, 28, 28), np.float32)}, ["logits"])
    assert time.monotonic() - start < 15.0  # refused, not waited out
    remote.close()
