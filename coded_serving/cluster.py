"""A coded ensemble whose members live on other Triton servers: one frontend, several workers.

Every worker serves the same worker repository (the deployed model and the parity model);
the frontend's ensemble calls worker ``i`` for member ``i`` over gRPC.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .codes import CodeSpec, make_code
from .default_repository import DEPLOYED_ONNX, PARITY_ONNX, coded_ensemble, onnx_model
from .repository import CodedEnsembleSpec, RepositorySpec, write_repository

DEPLOYED = "lenet5"
PARITY = "lenet5_parity"


def worker_repository_spec(onnx_dir: Path) -> RepositorySpec:
    return RepositorySpec((onnx_model(DEPLOYED, Path(onnx_dir) / DEPLOYED_ONNX),
                           onnx_model(PARITY, Path(onnx_dir) / PARITY_ONNX)))


def frontend_repository_spec(onnx_dir: Path, worker_urls: list[str], deadline_ms: float = 10.0) -> RepositorySpec:
    """``lenet5_parm`` (ParM, k=2) with member i on ``worker_urls[i]`` (host:port of its gRPC endpoint)."""
    code = CodeSpec("parm-addition", 2)
    if len(worker_urls) != make_code(code).num_workers:
        raise ValueError(f"ParM k=2 needs {make_code(code).num_workers} workers, got {len(worker_urls)}")
    local = coded_ensemble("lenet5_parm", code, Path(onnx_dir) / DEPLOYED_ONNX, Path(onnx_dir) / PARITY_ONNX,
                           deadline_ms=deadline_ms)
    ensemble = next(m for m in local if isinstance(m, CodedEnsembleSpec))
    models = [DEPLOYED] * code.k + [PARITY]
    remote = dataclasses.replace(ensemble, members=tuple(f"grpc://{url}/{m}" for url, m in zip(worker_urls, models)))
    return RepositorySpec((remote, *remote.codec_models()))


def write_cluster(onnx_dir: Path, worker_urls: list[str], target: Path, deadline_ms: float = 10.0) -> tuple[Path, Path]:
    """Write ``target/frontend`` and ``target/worker``."""
    frontend = write_repository(frontend_repository_spec(onnx_dir, worker_urls, deadline_ms), Path(target) / "frontend")
    worker = write_repository(worker_repository_spec(onnx_dir), Path(target) / "worker")
    return frontend, worker
