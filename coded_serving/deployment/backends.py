"""The project's own Triton backends, laid out as a server's backend directory expects them:
``<dir>/<name>/model.py`` for the Python-based ones (shipped in the package as
``coded_serving.python_backends``) and ``<dir>/coded_ensemble/libtriton_coded_ensemble.so``, the
scheduler compiled from the C++ sources the package ships. The launcher, the Docker image and a
plain ``pip install`` use this one layout (``coded-serving backends DIR``).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.resources
import os
import shutil
from pathlib import Path

from coded_serving import scheduler

SCHEDULER = "coded_ensemble"


def python_backends() -> Path:
    return Path(str(importlib.resources.files("coded_serving.python_backends")))


def install_backends(target: Path) -> Path:
    """One folder per project backend under ``target`` (created if needed). A folder that already
    holds a native backend of that name keeps it: on the NGC image, ONNX Runtime's own backend
    serves the members, not the project's Python stand-in."""
    target = Path(target)
    for backend in sorted(python_backends().iterdir()):
        native = target / backend.name / f"libtriton_{backend.name}.so"
        if (backend / "model.py").is_file() and not native.exists():
            (target / backend.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(backend / "model.py", target / backend.name / "model.py")
    (target / SCHEDULER).mkdir(parents=True, exist_ok=True)
    library = compiled_scheduler()
    shutil.copyfile(library, target / SCHEDULER / library.name)
    return target


def compiled_scheduler() -> Path:
    """The scheduler library, compiled once per version of its sources into the user's cache
    (servers started at the same time wait for one compile)."""
    sources = sorted(p for p in scheduler.SOURCE_DIR.iterdir() if p.suffix in (".cc", ".h"))
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "coded-serving" / digest
    cache.mkdir(parents=True, exist_ok=True)
    library = cache / f"libtriton_{SCHEDULER}.so"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not library.exists():
            building = cache / "building"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir()
            os.replace(scheduler.compile_backend(building), library)
    return library
