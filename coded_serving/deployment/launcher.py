"""Start the real ``tritonserver`` shipped in the nvidia-pytriton wheel, without Docker.

The wheel carries the server, libtritonserver and the Python backend, but no ONNX Runtime
backend: the project's Python-based backends (``python_backends/<name>/model.py``, one of
them named ``onnxruntime``) fill that gap, so one repository serves unchanged here and on
the NGC image with its native backends.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import ipaddress
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import tempfile
import time
import urllib.request
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from coded_serving.deployment.backends import install_backends

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = PROJECT_ROOT / "model_repository"
SHM_GLOB = "/dev/shm/triton_*_backend_shm_region_*"
#: read once at import: sysconfig's lazy first read is not thread-safe (servers start in threads)
PYTHON_LIBDIR = sysconfig.get_config_var("LIBDIR")
ADMIN_HEADER = "coded-serving-admin-key"
#: the same key as gRPC metadata: Triton's gRPC frontend prefixes every restricted-protocol key with
#: ``triton-grpc-protocol-`` (kRestrictedProtocolHeaderTemplate in its grpc_server.h)
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
#: the key of a server on another machine, for the project's tools (and the default of ``--admin-key``)
ADMIN_KEY_ENV = "CODED_SERVING_ADMIN_KEY"
#: model control and server settings are the operator's: every call to these needs the admin key
RESTRICTED_APIS = ("model-repository", "model-config", "shared-memory", "trace", "logging")


@dataclass(frozen=True)
class ServerConfig:
    model_repository: Path = DEFAULT_REPOSITORY
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    #: metrics (per-model traffic and latency) stay on loopback unless asked otherwise
    metrics_host: str = "127.0.0.1"
    #: seconds between SIGTERM and SIGKILL when stopping
    stop_margin_s: float = 15.0
    #: the key that model control and settings calls need (``RESTRICTED_APIS``); None: a fresh
    #: random one per start. Either way the launcher writes it to ``key_path(http_port)``.
    admin_key: str | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def http_url(self) -> str:
        return f"{_url_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_url_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.metrics_host)}:{self.metrics_port}/metrics"


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` stands for (IPv4 and IPv6 alike)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"cannot resolve host {host!r}: {error.strerror}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return [getattr(a, "ipv4_mapped", None) or a for a in addresses]


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (127.0.0.0/8, ::1); ValueError if it does not resolve."""
    return all(address.is_loopback for address in _addresses(host))


def _url_host(host: str) -> str:
    """An IPv6 address in brackets, as URLs (and gRPC's addresses) write it."""
    return f"[{host}]" if ":" in host else host


def _evhtp_address(host: str) -> str:
    """Triton's HTTP and metrics servers (libevhtp) take IPv6 addresses with an ``ipv6:`` prefix."""
    return f"ipv6:{host}" if ":" in host else host


def key_path(http_port: int) -> Path:
    """Where the launcher keeps the admin key of the server on ``http_port``: readable by this user only."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "coded-serving" / "keys" / f"{http_port}.key"


def admin_key_for(http_url: str) -> str | None:
    """The admin key of the server at ``http_url``: the file its launcher wrote when that server is on
    this machine, else ``$CODED_SERVING_ADMIN_KEY``. A local key file is never sent to another host."""
    host, _, port = http_url.split("://")[-1].rpartition(":")
    try:
        local = all(a.is_loopback or a.is_unspecified for a in _addresses(host.strip("[]")))
    except ValueError:
        local = False
    if local and port.isdigit():
        try:
            return key_path(int(port)).read_text()
        except FileNotFoundError:
            pass
    return os.environ.get(ADMIN_KEY_ENV) or None


class AdminKey:
    """A tritonclient plugin that sends the admin key with every call, as Triton's frontend expects it."""

    def __init__(self, key: str, grpc: bool = False):
        self.key = key
        self.header = GRPC_ADMIN_HEADER if grpc else ADMIN_HEADER

    def __call__(self, request) -> None:
        request.headers = {**(request.headers or {}), self.header: self.key}


def with_admin_key(client, http_url: str):
    """``client`` (a tritonclient HTTP or gRPC client) sending the admin key of the server whose HTTP
    endpoint is ``http_url``, when one is known."""
    key = admin_key_for(http_url)
    if key:
        client.register_plugin(AdminKey(key, grpc=type(client).__module__.startswith("tritonclient.grpc")))
    return client


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
        #: the key of the running server (``config.admin_key`` or a fresh one), set by ``start``
        self.admin_key: str | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="coded-serving-"))
        self._process: subprocess.Popen | None = None
        self._key_file: Path | None = None
        self._shm_before: set[str] = set()

    def command(self, backend_directory: Path, admin_key: str) -> list[str]:
        c = self.config
        return [
            str(_pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={Path(c.model_repository).resolve()}",
            f"--backend-directory={backend_directory}",
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--http-address={_evhtp_address(c.host)}",
            f"--http-port={c.http_port}",
            f"--grpc-address={_url_host(c.host)}",
            f"--grpc-port={c.grpc_port}",
            f"--metrics-address={_evhtp_address(c.metrics_host)}",
            f"--metrics-port={c.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--exit-timeout-secs=5",
            f"--log-verbose={c.log_verbose}",
            *self._restrictions(admin_key),
        ]

    def _restrictions(self, admin_key: str) -> list[str]:
        """Model control and settings need the key on every interface, loopback included: any local
        process could reach them otherwise. Off loopback, per-model statistics need it too.

        Triton reads these options from its command line only (command_line_parser.cc parses argv with
        getopt_long; no option file, and the environment only for Vertex AI), so the key is in the
        server's /proc/<pid>/cmdline, which other local users can read unless /proc is mounted with
        hidepid. The key file and the clients keep it out of everything else."""
        apis = ",".join(RESTRICTED_APIS + (() if self.config.loopback else ("statistics",)))
        restricted = f"{apis}:{ADMIN_HEADER}={admin_key}"
        return [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]

    def start(self, ready_timeout_s: float = 120.0) -> "TritonServer":
        c = self.config
        if not Path(c.model_repository).is_dir():
            raise FileNotFoundError(f"model repository {c.model_repository} does not exist")
        for host, port in ((c.host, c.http_port), (c.host, c.grpc_port), (c.metrics_host, c.metrics_port)):
            _check_port_free(host, port)
        backends = build_backend_directory(self._workdir / "backends")
        self.admin_key = c.admin_key or secrets.token_urlsafe(32)
        command = self.command(backends, self.admin_key)
        self._key_file = _write_private(key_path(c.http_port), self.admin_key)
        self._shm_before = set(glob.glob(SHM_GLOB))
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            # from the spawner's thread: the parent-death signal follows the thread that forked
            self._process = _spawner.submit(
                subprocess.Popen, command, env=server_environment(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            ).result()
        finally:
            if self.log_path:
                log.close()
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        """Until every endpoint answers: HTTP and gRPC say ready, the metrics port serves its page
        (each frontend starts on its own, so one answering says nothing of the others)."""
        import tritonclient.grpc as grpc
        from tritonclient.utils import InferenceServerException

        grpc_client = grpc.InferenceServerClient(self.config.grpc_url)
        pending = {
            "HTTP": lambda: _answers(f"http://{self.config.http_url}/v2/health/ready"),
            "gRPC": lambda: grpc_client.is_server_ready(client_timeout=1),
            "metrics": lambda: _answers(self.config.metrics_url),
        }
        deadline = time.monotonic() + timeout_s
        try:
            while pending and time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with code {self._process.returncode}{self._log_hint()}")
                for endpoint, ready in list(pending.items()):
                    try:
                        if ready():
                            del pending[endpoint]
                    except (OSError, InferenceServerException):
                        pass
                if pending:
                    time.sleep(0.2)
        finally:
            grpc_client.close()
        if pending:
            raise TimeoutError(f"tritonserver's {', '.join(pending)} not ready after {timeout_s:.0f} s{self._log_hint()}")

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
        if self._key_file is not None:
            self._key_file.unlink(missing_ok=True)
            self._key_file = None
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
    _addresses(host)  # an unresolvable host is named as such, not as a busy port
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            sock.bind(address)
        except OSError:
            raise RuntimeError(f"port {port} on {host} is already in use") from None


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return response.status == 200


def _write_private(path: Path, text: str) -> Path:
    """``text`` in a fresh file only this user can read (a stale file of a killed launcher is replaced)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)
    return path


#: one long-lived thread starts every server (see ``_die_with_parent``)
class _Spawner:
    """One daemon thread that starts every server: the parent-death signal fires when the thread that
    forked exits, so that thread lives as long as the launcher. A daemon, unlike a thread pool's
    worker, never holds up the launcher's exit (nor deadlocks it where gevent patched threading)."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, call, *args, **kwargs) -> Future:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tritonserver-spawner", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._jobs.put((functools.partial(call, *args, **kwargs), future))
        return future

    def _run(self) -> None:
        while True:
            call, future = self._jobs.get()
            try:
                future.set_result(call())
            except BaseException as error:  # handed to the caller waiting on the future
                future.set_exception(error)


_spawner = _Spawner()
_prctl = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1


def _die_with_parent(launcher: int) -> None:
    """In the server, before exec: SIGTERM it when the launcher dies, even by SIGKILL, so that it shuts
    down as on ``stop`` and takes its backend stubs with it. Linux sends the signal when the *thread*
    that forked exits: hence the spawner thread, which lives as long as the launcher."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher:  # the launcher died before the signal was armed
        os._exit(1)


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
