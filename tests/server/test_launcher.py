"""``coded-serving serve``: starts the real server, answers on every endpoint, keeps model control
locked, stops cleanly on SIGTERM/Ctrl-C and dies with its launcher.

The plain ``lenet5`` model is served alone: these tests are about the launcher, not the ensembles."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

from coded_serving.deployment.launcher import (
    ADMIN_HEADER, DEFAULT_REPOSITORY, ServerConfig, TritonServer, admin_key_for, free_port, key_path, with_admin_key,
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """The shipped ``lenet5`` alone."""
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(DEFAULT_REPOSITORY / "lenet5", root / "lenet5")
    return root


def serve(*args):
    return subprocess.Popen([sys.executable, "-m", "coded_serving.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def serve_lenet5(repository: Path) -> tuple[subprocess.Popen, list[str]]:
    """``coded-serving serve`` on free ports, once it printed its banner (every endpoint answers)."""
    ports = [str(free_port()) for _ in range(3)]
    process = serve("--model-repository", str(repository),
                    "--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2])
    banner = [process.stdout.readline() for _ in range(5)]
    assert f"127.0.0.1:{ports[0]}" in banner[1] and f"127.0.0.1:{ports[1]}" in banner[2], banner
    return process, ports


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_endpoints_and_stops_cleanly(repository, stop_signal):
    process, ports = serve_lenet5(repository)
    try:
        # at once: the banner comes only when HTTP, gRPC and metrics all answer
        with grpc.InferenceServerClient(f"127.0.0.1:{ports[1]}") as client:
            assert client.is_model_ready("lenet5", client_timeout=5)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/metrics", timeout=5) as r:
            assert b"nv_inference_count" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/models/lenet5/ready", timeout=5) as r:
            assert r.status == 200
        assert key_path(int(ports[0])).is_file()
        server = _server_pid(ports[0])
        group = _group(server)
        process.send_signal(stop_signal)
        try:
            code = process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            with open(f"/proc/{process.pid}/status") as status:
                signals = [line.strip() for line in status if line.startswith(("Sig", "ShdPnd"))]
            process.send_signal(signal.SIGUSR1)  # the launcher writes its threads' stacks
            time.sleep(1)
            process.kill()
            output = process.communicate(timeout=10)[0]
            pytest.fail(f"no exit 40 s after {stop_signal.name}; tritonserver "
                        f"{'still runs' if os.path.exists(f'/proc/{server}') else 'is gone'}; the launcher's "
                        f"signals {signals}, output and stacks:\n{output[-6000:]}")
        assert code == 0
    finally:
        process.kill()
    _assert_gone(group)
    assert not key_path(int(ports[0])).exists()


def test_a_killed_launcher_takes_the_server_and_its_stubs_with_it(repository):
    """The server gets SIGTERM from the kernel when its launcher dies: it exits as on ``stop``, which
    allows it ``stop_margin_s`` before SIGKILL."""
    process, ports = serve_lenet5(repository)
    try:
        group = _group(_server_pid(ports[0]))
        assert len(group) >= 2  # the server and the model's stub
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + ServerConfig().stop_margin_s
        while [pid for pid in group if pid in _pids()] and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        process.kill()
        key_path(int(ports[0])).unlink(missing_ok=True)  # left by the killed launcher, harmless but clutter
    _assert_gone(group)


def _assert_gone(group: dict[int, str]) -> None:
    """No process of the server's session is left, nor any shared memory its stubs were given."""
    regions = [word for cmdline in group.values() for word in cmdline.split() if "_shm_region_" in word]
    assert regions
    assert not [pid for pid in group if pid in _pids()]
    assert not [region for region in regions if os.path.exists(f"/dev/shm/{region}")]


def test_stop_leaves_no_process_of_the_server_behind_nor_its_key(repository):
    config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          admin_key="s3cret")
    server = TritonServer(config).start()
    group = _group(server.pid)
    assert len(group) >= 2  # the server and the model's stub
    assert key_path(config.http_port).read_text() == "s3cret"
    server.stop()
    _assert_gone(group)
    assert not key_path(config.http_port).exists()


def _server_pid(http_port: str) -> int:
    (pid,) = [pid for pid in _pids() if f"--http-port={http_port}" in _cmdline(pid)]
    return pid


def _pids() -> list[int]:
    """Live processes (a zombie has let go of everything but its number)."""
    pids = []
    for pid in (int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
        try:
            with open(f"/proc/{pid}/stat") as status:
                if status.read().rsplit(")", 1)[1].split()[0] != "Z":  # the state follows the command's name
                    pids.append(pid)
        except OSError:
            continue
    return pids


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


def test_serve_names_an_unresolvable_host():
    process = serve("--host", "no-such-host.invalid", "--http-port", str(free_port()))
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "cannot resolve host 'no-such-host.invalid'" in output


@pytest.fixture(scope="module")
def locked(repository, tmp_path_factory):
    """A server started as by default: a fresh admin key, model control locked on loopback."""
    config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    server = TritonServer(config, tmp_path_factory.mktemp("locked") / "server.log").start()
    yield server
    server.stop()


def test_a_fresh_key_per_start_in_a_file_only_the_user_reads(locked):
    path = key_path(locked.config.http_port)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == locked.admin_key == admin_key_for(locked.config.http_url)
    assert len(locked.admin_key) >= 32
    config = ServerConfig(locked.config.model_repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port())
    with TritonServer(config) as other:
        assert other.admin_key != locked.admin_key
        assert key_path(config.http_port).read_text() == other.admin_key


#: one call per restricted category: its HTTP method and path, and the same call over gRPC
RESTRICTED_CALLS = {
    "model-repository": ("POST", "/v2/repository/index", lambda client: client.get_model_repository_index()),
    "model-config": ("GET", "/v2/models/lenet5/config", lambda client: client.get_model_config("lenet5")),
    "shared-memory": ("GET", "/v2/systemsharedmemory/status",
                      lambda client: client.get_system_shared_memory_status()),
    "trace": ("GET", "/v2/trace/setting", lambda client: client.get_trace_settings()),
    "logging": ("GET", "/v2/logging", lambda client: client.get_log_settings()),
}


@pytest.mark.parametrize("category", RESTRICTED_CALLS)
def test_restricted_calls_need_the_key_over_http_and_grpc(locked, category):
    method, path, grpc_call = RESTRICTED_CALLS[category]
    url = f"http://{locked.config.http_url}{path}"
    assert _request(url, method=method) == 403
    assert _request(url, {ADMIN_HEADER: "wrong"}, method) == 403
    assert _request(url, {ADMIN_HEADER: locked.admin_key}, method) == 200
    with grpc.InferenceServerClient(locked.config.grpc_url) as plain:
        with pytest.raises(InferenceServerException, match="restricted"):
            grpc_call(plain)
    with with_admin_key(grpc.InferenceServerClient(locked.config.grpc_url), locked.config.http_url) as admin:
        grpc_call(admin)


def test_model_control_needs_the_key_inference_does_not(locked):
    http_url, grpc_url = locked.config.http_url, locked.config.grpc_url
    with http.InferenceServerClient(http_url) as plain_http, grpc.InferenceServerClient(grpc_url) as plain_grpc, \
            with_admin_key(http.InferenceServerClient(http_url), http_url) as admin_http, \
            with_admin_key(grpc.InferenceServerClient(grpc_url), http_url) as admin_grpc:
        with pytest.raises(InferenceServerException, match="restricted"):
            plain_http.unload_model("lenet5")
        admin_http.unload_model("lenet5")
        assert not plain_http.is_model_ready("lenet5")
        with pytest.raises(InferenceServerException, match="restricted"):
            plain_grpc.load_model("lenet5")
        admin_grpc.load_model("lenet5")
        images = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
        answers = []
        for client, triton in ((plain_http, http), (plain_grpc, grpc)):
            query = triton.InferInput("image", list(images.shape), "FP32")
            query.set_data_from_numpy(images)
            answers.append(client.infer("lenet5", [query]).as_numpy("logits"))
        np.testing.assert_allclose(answers[0], answers[1], rtol=1e-6)
        assert answers[0].shape == (2, 10)


def test_serves_on_ipv6_loopback(repository):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    config = ServerConfig(repository, host="::1", http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port())
    with TritonServer(config) as server:
        assert server.config.loopback
        with with_admin_key(http.InferenceServerClient(config.http_url), config.http_url) as admin, \
                grpc.InferenceServerClient(config.grpc_url) as plain:
            assert [model["name"] for model in admin.get_model_repository_index()] == ["lenet5"]
            assert plain.is_model_ready("lenet5")


def _request(url: str, headers: dict | None = None, method: str = "POST") -> int:
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
