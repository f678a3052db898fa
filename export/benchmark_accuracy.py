"""The accuracy benchmark: ParM (addition, concatenation), Berrut, NeRCC and their systematic variants,
with stragglers, on the Fashion-MNIST test set, measured through a live tritonserver.

    .venv/bin/python export/benchmark_accuracy.py          # writes reports/accuracy.md

Stages, each resumable or cached under --out (build/accuracy): train the deployed MLP and LeNet-5 and
every ParM parity model (export/train_grid.py), tune the training-free codes on the validation split
(export/tune_codes.py), then serve every configuration from one Triton repository, make stragglers by
unloading workers, measure, and write the report's ParM/Berrut/NeRCC sections (other sections of the
report, e.g. Coded-InvNet's, are kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import time
from pathlib import Path

import torch

from coded_serving.benchmarks.accuracy import (
    DEFAULT_ADOPT, DEFAULT_OUT, AccuracyGrid, BenchmarkPaths, LiveExecutor, OfflineExecutor,
    live_repository, measure, measurements_from_json, measurements_to_json, train_grid, tune_grid,
)
from coded_serving.benchmarks.accuracy_report import SECTION_BUILDERS, ReportInputs, RunInfo, preamble
from coded_serving.training.data import load_fashion_mnist
from coded_serving.training.pipeline import ModelRecord, TrainingPlan, read_manifest
from coded_serving.deployment.launcher import PROJECT_ROOT, ServerConfig, TritonServer, free_port
from coded_serving.benchmarks.report_sections import machine_description, update_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "accuracy.md")
    parser.add_argument("--archs", nargs="+", default=list(AccuracyGrid().archs))
    parser.add_argument("--adopt", type=Path, default=DEFAULT_ADOPT, help="checkpoints of another build to reuse")
    parser.add_argument("--test-images", type=int, default=None, help="the first N test images (default: all 10k)")
    parser.add_argument("--deadline-ms", type=float, default=3000.0, help="generous: stragglers are unloaded workers")
    parser.add_argument("--max-batch", type=int, default=256, help="queries per request (whole coding groups)")
    parser.add_argument("--client-threads", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and onnxruntime threads, training and tuning (two thrash on a busy 2-core machine)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the last run's <out>/measurements.json, measuring nothing")
    args = parser.parse_args()
    paths = BenchmarkPaths(args.out)
    grid = dataclasses.replace(AccuracyGrid(), archs=tuple(args.archs))
    # Inherited by the server's backend stubs, one process each: single-threaded BLAS keeps ~60 of them
    # within the sandbox's thread limit and off each other's cores.
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    if args.report_only:
        saved = json.loads(paths.measurements.read_text())
        run, measurements = RunInfo(**saved["run"]), measurements_from_json(saved["measurements"])
        tuned = tune_grid(grid, load_fashion_mnist(seed=grid.tuning.seed), paths.models, paths.tuning)  # cached
        return write_report(args.report, ReportInputs(run, grid, read_manifest(paths.models), tuned, measurements,
                                                      adopted_seconds(read_manifest(paths.models))))

    start, started = time.perf_counter(), datetime.datetime.now(datetime.timezone.utc)
    load_at_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(seed=grid.tuning.seed)
    test = data.test if args.test_images is None else data.test.take(args.test_images)
    stages = {}

    records = train_grid(grid, TrainingPlan(seed=grid.tuning.seed), data, paths.models, args.adopt)
    stages["training"] = time.perf_counter() - start
    tuned = tune_grid(grid, data, paths.models, paths.tuning, args.threads)
    stages["tuning"] = time.perf_counter() - start - sum(stages.values())

    entries = grid.entries(tuned)
    written, live = live_repository(entries, paths.models, paths.repository, args.deadline_ms, args.max_batch)
    config = ServerConfig(live, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(config, paths.server_log):
        executor = LiveExecutor(config.http_url, written, live)
        _, measurements = measure(entries, test.images, test.labels, executor, grid.tuning, args.max_batch,
                                  args.client_threads, checker=OfflineExecutor(paths.models))
    stages["serving"] = time.perf_counter() - start - sum(stages.values())
    run = RunInfo(
        started_utc=f"{started:%Y-%m-%d %H:%M}", machine=machine_description(), wall_s=time.perf_counter() - start,
        stage_s=stages, train_size=len(data.train), val_size=len(data.val), test_size=len(test),
        max_batch=args.max_batch, deadline_ms=args.deadline_ms, threads=args.client_threads,
        load_average=(load_at_start, os.getloadavg()[0]),
    )
    saved = {"run": dataclasses.asdict(run), "measurements": measurements_to_json(measurements)}
    paths.measurements.write_text(json.dumps(saved, indent=1) + "\n")
    write_report(args.report, ReportInputs(run, grid, records, tuned, measurements, adopted_seconds(records)))


def adopted_seconds(records: dict[str, ModelRecord]) -> float:
    """What the checkpoints adopted from export/build_default.py cost to train, from that build's report."""
    report = PROJECT_ROOT / "reports" / "default_models.json"
    if not report.exists():
        return 0.0
    figures = json.loads(report.read_text())
    roles = {record.role for record in records.values() if record.reused_from}
    return sum(figures[role]["train_seconds"] for role in roles)


def write_report(path: Path, inputs: ReportInputs) -> None:
    update_report(path, [build(inputs) for build in SECTION_BUILDERS], preamble(inputs))
    print(f"wrote {path} (run of {inputs.run.wall_s / 60:.1f} min)")


if __name__ == "__main__":
    main()
