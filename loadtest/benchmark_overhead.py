"""Coordinator overhead: coded ensemble (library codec / model codec) and a bare BLS forwarder
vs a direct call, no straggler.

    .venv/bin/python loadtest/benchmark_overhead.py      # writes reports/overhead.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from coded_serving.training.data import load_fashion_mnist
from coded_serving.deployment.builder import onnx_files_of_default_repository
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT, ServerConfig, TritonServer, free_port
from coded_serving.benchmarks.overhead import measure, overhead_repository, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1000, help="sequential requests per model, protocol and batch")
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "overhead.md")
    args = parser.parse_args(argv)

    images = load_fashion_mnist().test.images[:256]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = onnx_files_of_default_repository(DEFAULT_REPOSITORY, Path(tmp) / "onnx")
        repository = overhead_repository(onnx_dir, Path(tmp) / "repository")
        config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        with TritonServer(config, Path(tmp) / "server.log"):
            run = measure(config.http_url, config.grpc_url, images, args.rounds, args.load_seconds, args.concurrency)
    text = report(run)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
