"""The coordinator-overhead benchmark: Triton's statistics arithmetic, and one short real run."""

from __future__ import annotations

import subprocess
import sys

from coded_serving.deployment.launcher import PROJECT_ROOT
from coded_serving.benchmarks.overhead import FORWARD, CODED, MODELS, server_times


def test_server_times_are_means_per_request_over_the_run():
    before = {"a": (10, 10_000_000, 4_000_000), "idle": (5, 1, 1)}
    after = {"a": (14, 18_000_000, 6_000_000), "idle": (5, 1, 1), "new": (2, 3_000_000, 1_000_000)}
    times = server_times(before, after)
    assert set(times) == {"a", "new"}  # a model without requests in the run is left out
    assert (times["a"].requests, times["a"].in_server_ms, times["a"].execute_ms) == (4, 2.0, 0.5)
    assert (times["new"].requests, times["new"].in_server_ms) == (2, 1.5)


def test_overhead_benchmark_writes_every_table(tmp_path):
    report = tmp_path / "overhead.md"
    subprocess.run([sys.executable, "loadtest/benchmark_overhead.py", "--rounds", "5", "--load-seconds", "0.5",
                    "--concurrency", "2", "--report", str(report)], cwd=PROJECT_ROOT, check=True, timeout=300,
                   capture_output=True)
    text = report.read_text()
    for protocol in ("http", "grpc"):
        for batch in (1, 2):
            rows = [line for line in text.splitlines() if line.startswith(f"| {protocol} | {batch} | ")]
            assert [row.split("`")[1] for row in rows] == list(MODELS)
    section = text.split("## Where the time goes")[1].split("## Closed loop")[0]
    breakdown = {line.split("`")[1]: line.split(" | ") for line in section.splitlines() if line.startswith("| `")}
    assert float(breakdown[FORWARD][4]) == 1.0  # members called per request
    assert float(breakdown[CODED][4]) >= 1.0  # a lone query: one member (two if it was hedged)
