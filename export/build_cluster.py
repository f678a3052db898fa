"""Write the multi-server repositories used by `docker compose --profile cluster up`:
cluster_repository/frontend (the coded ensemble, members on the workers over gRPC) and
cluster_repository/worker (what each worker serves), from the shipped models.

    .venv/bin/python export/build_cluster.py [--workers worker-0:8001,worker-1:8001,worker-2:8001]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from coded_serving.deployment.builder import default_repository_spec, onnx_files_of_default_repository, write_cluster
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="worker-0:8001,worker-1:8001,worker-2:8001",
                        help="host:port of each worker's gRPC endpoint, member order")
    parser.add_argument("--target", type=Path, default=PROJECT_ROOT / "cluster_repository")
    parser.add_argument("--deadline-ms", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = onnx_files_of_default_repository(DEFAULT_REPOSITORY, Path(tmp))
        models = default_repository_spec(onnx_dir, deadline_ms=args.deadline_ms).models
        for path in write_cluster(models, args.workers.split(","), args.target):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
