"""Coordinator overhead: coded ensemble (library codec / model codec) vs a direct call, no straggler.

    .venv/bin/python loadtest/benchmark_overhead.py      # writes reports/overhead.md
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import numpy as np

from coded_serving.data import load_fashion_mnist
from coded_serving.default_repository import onnx_files_of_default_repository
from coded_serving.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT, ServerConfig, TritonServer, free_port
from coded_serving.overhead import (
    DIRECT, IN_PROCESS, MODEL_CODEC, loaded_run, machine_description,
    overhead_repository, sequential_latencies,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1000, help="sequential requests per model and protocol")
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "overhead.md")
    args = parser.parse_args(argv)

    images = load_fashion_mnist().test.images[:256]
    models = [DIRECT, IN_PROCESS, MODEL_CODEC]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = onnx_files_of_default_repository(DEFAULT_REPOSITORY, Path(tmp) / "onnx")
        repository = overhead_repository(onnx_dir, Path(tmp) / "repository")
        config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        with TritonServer(config, Path(tmp) / "server.log"):
            sequential = []
            for protocol, url in (("http", config.http_url), ("grpc", config.grpc_url)):
                latencies = sequential_latencies(url, protocol, models, images, args.rounds)
                sequential += [(protocol, model, latencies[model]) for model in models]
            loaded = [loaded_run(config.http_url, "http", model, images, args.concurrency, args.load_seconds)
                      for model in models]

    lines = [
        "# Coordinator overhead (no straggler)",
        "",
        f"Regenerate: `.venv/bin/python loadtest/benchmark_overhead.py` "
        f"(rounds={args.rounds}, load {args.load_seconds:.0f} s at concurrency {args.concurrency}).",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine_description()}, "
        "tritonserver 2.51 from nvidia-pytriton, CPU only, all models in one server.",
        "",
        f"`{DIRECT}`: the deployed LeNet-5, called directly. `{IN_PROCESS}`: the coded ensemble (ParM, k=2), "
        f"encoding/decoding in its own process (the default). `{MODEL_CODEC}`: the same ensemble calling the "
        "standalone encoder model over BLS (and the decoder, when decoding).",
        "",
        "## Concurrency 1, batch 1 (requests interleaved across models)",
        "",
        "| protocol | model | median ms | p99 ms | median over direct ms |",
        "|---|---|---|---|---|",
    ]
    for protocol, model, latencies in sequential:
        direct = next(l for p, m, l in sequential if p == protocol and m == DIRECT)
        lines.append(f"| {protocol} | `{model}` | {np.median(latencies):.3f} | {np.percentile(latencies, 99):.3f} | "
                     f"{np.median(latencies) - np.median(direct):+.3f} |")
    lines += [
        "",
        f"## Closed loop, concurrency {args.concurrency}, batch 1, HTTP",
        "",
        "| model | requests | throughput req/s | median ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for summary in loaded:
        lines.append(f"| `{summary.model}` | {summary.requests} | {summary.throughput_rps:.0f} | "
                     f"{summary.median_ms:.2f} | {summary.p99_ms:.2f} |")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
