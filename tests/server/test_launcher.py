"""``coded-serving serve``: starts the real server, answers, stops cleanly on SIGTERM/Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from coded_serving.deployment.launcher import ADMIN_HEADER, ServerConfig, TritonServer, free_port


def serve(*args):
    return subprocess.Popen([sys.executable, "-m", "coded_serving.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_endpoints_and_stops_cleanly(stop_signal):
    ports = [str(free_port()) for _ in range(3)]
    process = serve("--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2])
    try:
        banner = [process.stdout.readline() for _ in range(4)]
        assert f"127.0.0.1:{ports[0]}" in banner[1] and f"127.0.0.1:{ports[1]}" in banner[2]
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/lenet5_parm/ready", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/metrics", timeout=5) as r:
            assert b"nv_inference_count" in r.read()
        (server_pid,) = [pid for pid in _pids() if f"--http-port={ports[0]}" in _cmdline(pid)]
        group = _group(server_pid)
        start = time.monotonic()
        process.send_signal(stop_signal)
        assert process.wait(timeout=40) == 0
        assert time.monotonic() - start < 40
    finally:
        process.kill()
    _assert_gone(group)


def _assert_gone(group: dict[int, str]) -> None:
    """No process of the server's session is left, nor any shared memory its stubs were given."""
    regions = [word for cmdline in group.values() for word in cmdline.split() if "_shm_region_" in word]
    assert regions
    assert not [pid for pid in group if pid in _pids()]
    assert not [region for region in regions if os.path.exists(f"/dev/shm/{region}")]


def test_stop_leaves_no_process_of_the_server_behind():
    server = TritonServer(ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())).start()
    group = _group(server.pid)
    assert len(group) > 5  # the server and its backend stubs
    server.stop()
    _assert_gone(group)


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _group(leader: int) -> dict[int, str]:
    """The processes of a server's session, with their command lines."""
    group = {}
    for pid in _pids():
        try:
            if os.getpgid(pid) == leader:
                group[pid] = _cmdline(pid)
        except ProcessLookupError:
            continue
    return group


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_serve_refuses_a_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = serve("--http-port", str(port))
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in output


def test_serve_reports_a_missing_repository(tmp_path):
    process = serve("--model-repository", str(tmp_path / "nope"), "--http-port", str(free_port()))
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "does not exist" in output


def test_model_control_needs_the_admin_key_when_one_is_set():
    """Beyond loopback a key is required; with a key, inference stays open and model control needs it."""
    with pytest.raises(ValueError, match="needs an admin key"):
        TritonServer(ServerConfig(host="0.0.0.0")).command(Path("/backends"))
    config = ServerConfig(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), admin_key="s3cret")
    with TritonServer(config) as server:
        url = f"http://{config.http_url}"
        assert _request(f"{url}/v2/repository/models/lenet5/unload") == 403
        assert _request(f"{url}/v2/repository/models/lenet5/unload", {ADMIN_HEADER: "wrong"}) == 403
        assert _request(f"{url}/v2/models/lenet5/ready", method="GET") == 200
        assert _request(f"{url}/v2/repository/models/lenet5/unload", {ADMIN_HEADER: "s3cret"}) == 200
        assert _request(f"{url}/v2/models/lenet5/ready", method="GET") == 400
        assert server.running


def _request(url: str, headers: dict | None = None, method: str = "POST") -> int:
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
