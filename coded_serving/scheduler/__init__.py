"""The coded ensemble's scheduler: a C++ Triton backend (``libtriton_coded_ensemble.so``).

Its sources ship as package data and are compiled on the target machine with one g++ command.
The TRITONSERVER_*/TRITONBACKEND_* symbols stay undefined: they resolve against libtritonserver
when Triton loads the backend.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
LIBRARY_NAME = "libtriton_coded_ensemble.so"


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cc"))


def compile_backend(target_dir: Path, *, sanitize: bool = False) -> Path:
    """Compile the backend into ``target_dir``; ``sanitize`` builds it with AddressSanitizer."""
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    library = target_dir / LIBRARY_NAME
    flags = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"] if sanitize else ["-O2"]
    command = ["g++", *flags, "-std=c++17", "-shared", "-fPIC", "-pthread", "-o", str(library), *map(str, sources())]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"compiling the coded_ensemble backend failed:\n{' '.join(command)}\n{result.stderr}")
    return library
