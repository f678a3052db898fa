"""Start the real ``tritonserver`` shipped in the nvidia-pytriton wheel, without Docker.

The wheel carries the server, libtritonserver and the Python backend, but no ONNX Runtime
backend: the project's Python-based backends (``python_backends/<name>/model.py``, one of
them named ``onnxruntime``) fill that gap, so one repository serves unchanged here and on
the NGC image with its native backends.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from coded_serving.deployment.backends import install_backends

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
SHM_GLOB = "/dev/shm/triton_*_backend_shm_region_*"
#: read once at import: sysconfig's lazy first read is not thread-safe (servers start in threads)
PYTHON_LIBDIR = sysconfig.get_config_var("LIBDIR")
ADMIN_HEADER = "coded-serving-admin-key"


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path = DEFAULT_REPOSITORY
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    #: seconds between SIGTERM and SIGKILL when stopping
    stop_margin_s: float = 15.0
    #: when set, model control and repository calls need it in the ``coded-serving-admin-key``
    #: header; required to listen beyond loopback
    admin_key: str | None = None
    #: threads of the Python backend per model instance (None: Triton's default). Each BLS call
    #: to a member holds one until it returns: under heavy straggling a larger pool keeps the
    #: coordinator going, at the cost of that many threads for every Python model instance.
    python_thread_pool: int | None = None

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(socket.gethostbyname(self.host)).is_loopback

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pytriton_dir() -> Path:
    try:
        import pytriton
    except ImportError:
        raise RuntimeError("nvidia-pytriton is not installed: pip install 'coded-serving[cpu]'") from None
    return Path(pytriton.__file__).parent / "tritonserver"


def build_backend_directory(target: Path) -> Path:
    """Lay out the wheel's Python backend plus one folder per project backend under ``target``."""
    triton = _pytriton_dir()
    python_backend = target / "python"
    shutil.copytree(triton / "backends" / "python", python_backend)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(triton / "python_backend_stubs" / version / "triton_python_backend_stub", python_backend)
    return install_backends(target)


def server_environment() -> dict[str, str]:
    """The stub must load this interpreter's libpython and find this venv's packages."""
    env = dict(os.environ)
    libs = [PYTHON_LIBDIR, str(_pytriton_dir().parent.parent / "nvidia_pytriton.libs")]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


class TritonServer:
    """A running ``tritonserver``; a context manager that always stops it."""

    def __init__(self, config: ServerConfig, log_path: Path | None = None):
        self.config = config
        self.log_path = log_path
        self._workdir = Path(tempfile.mkdtemp(prefix="coded-serving-"))
        self._process: subprocess.Popen | None = None
        self._shm_before: set[str] = set()

    def command(self, backend_directory: Path) -> list[str]:
        c = self.config
        return [
            str(_pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={Path(c.model_repository).resolve()}",
            f"--backend-directory={backend_directory}",
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--http-address={c.host}",
            f"--http-port={c.http_port}",
            f"--grpc-address={c.host}",
            f"--grpc-port={c.grpc_port}",
            f"--metrics-address={c.host}",
            f"--metrics-port={c.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--exit-timeout-secs=5",
            f"--log-verbose={c.log_verbose}",
            *self._restrictions(),
            *([f"--backend-config=python,thread-pool-size={c.python_thread_pool}"] if c.python_thread_pool else []),
        ]

    def _restrictions(self) -> list[str]:
        """Loading, unloading and reconfiguring models is for the operator: off loopback, only with a key."""
        if not self.config.admin_key:
            if self.config.loopback:
                return []
            raise ValueError(f"serving on {self.config.host} (not loopback) needs an admin key for model control")
        apis = f"model-repository,model-config,shared-memory,trace,logging:{ADMIN_HEADER}={self.config.admin_key}"
        return [f"--http-restricted-api={apis}", f"--grpc-restricted-protocol={apis}"]

    def start(self, ready_timeout_s: float = 120.0) -> "TritonServer":
        if not Path(self.config.model_repository).is_dir():
            raise FileNotFoundError(f"model repository {self.config.model_repository} does not exist")
        for port in (self.config.http_port, self.config.grpc_port, self.config.metrics_port):
            _check_port_free(self.config.host, port)
        backends = build_backend_directory(self._workdir / "backends")
        self._shm_before = set(glob.glob(SHM_GLOB))
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            self.command(backends), env=server_environment(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.log_path:
            log.close()
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        url = f"http://{self.config.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self._process.returncode}{self._log_hint()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f} s{self._log_hint()}")

    def _log_hint(self) -> str:
        return f"; see {self.log_path}" if self.log_path else "; pass a log path to see why"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self) -> int:
        return self._process.wait()

    def stop(self) -> None:
        """SIGTERM, SIGKILL after the margin, then remove what the server left behind."""
        if self._process is not None:
            if self._process.poll() is None:
                os.killpg(self._process.pid, signal.SIGTERM)
                try:
                    self._process.wait(self.config.stop_margin_s)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(self._process.pid)  # the server's own session: it and any backend stub it left
            self._process.wait()
        for region in orphaned_shm_regions(self._shm_before):
            Path(region).unlink(missing_ok=True)
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def orphaned_shm_regions(existing_before: set[str]) -> set[str]:
    """Python-backend shared memory that appeared since ``existing_before`` and that no live process
    maps (a region still mapped belongs to another running server)."""
    return set(glob.glob(SHM_GLOB)) - existing_before - _mapped_files()


def _check_port_free(host: str, port: int) -> None:
    """A busy port would leave clients talking to some other server: refuse it up front."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError:
            raise RuntimeError(f"port {port} on {host} is already in use") from None


def _mapped_files() -> set[str]:
    mapped = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as lines:
                mapped.update(line.split(maxsplit=5)[-1].strip() for line in lines if "/dev/shm/" in line)
        except OSError:
            continue
    return mapped


def _kill_group(pid: int) -> None:
    """Backend stubs must not outlive their server."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
