"""Tail latency under stragglers and failures: the coded ensemble against its baselines.

    .venv/bin/python loadtest/benchmark.py

Serves the coded ensemble and the baselines from one benchmark repository (built from the shipped
ONNX files) on one tritonserver, runs every scenario with locust, and writes
reports/tail_latency.md with its plots. About 7 to 8 minutes with the defaults; ``--quick`` for a
smoke run of about 2 minutes (figures too short for the tail).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields, replace
from pathlib import Path

from coded_serving.deployment.launcher import PROJECT_ROOT
from coded_serving.benchmarks.tail import BenchmarkSettings, run_benchmark

QUICK = dict(duration_s=8.0, short_duration_s=6.0, saturation_duration_s=4.0, failure_at_s=3.0, batches=())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BenchmarkSettings()
    for f in fields(BenchmarkSettings):
        if f.name in ("slow", "batches"):
            continue
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name), help=f"default: {getattr(defaults, f.name)}")
    parser.add_argument("--batches", type=int, nargs="*", default=list(defaults.batches),
                        help="extra batch sizes for the slow-member runs")
    parser.add_argument("--slow-probability", type=float, default=defaults.slow.delay_probability)
    parser.add_argument("--slow-delay-ms", type=float, default=defaults.slow.delay_ms)
    parser.add_argument("--slow-tail-ms", type=float, default=defaults.slow.delay_tail_ms)
    parser.add_argument("--slow-max-ms", type=float, default=defaults.slow.delay_max_ms)
    parser.add_argument("--quick", action="store_true", help="short runs, no extra batch sizes: a smoke test")
    parser.add_argument("--deployed-onnx", type=Path, default=PROJECT_ROOT / "model_repository/lenet5/1/model.onnx")
    parser.add_argument("--parity-onnx", type=Path,
                        default=PROJECT_ROOT / "model_repository/lenet5_parm_coded_0/1/model.onnx")
    parser.add_argument("--workdir", type=Path, default=PROJECT_ROOT / "build/loadtest",
                        help="benchmark repository, server log, locust CSV/HTML and samples")
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports/tail_latency.md")
    args = parser.parse_args(argv)

    values = {f.name: getattr(args, f.name) for f in fields(BenchmarkSettings) if f.name != "slow"}
    values["batches"] = tuple(args.batches)
    values["slow"] = replace(defaults.slow, delay_probability=args.slow_probability, delay_ms=args.slow_delay_ms,
                             delay_tail_ms=args.slow_tail_ms, delay_max_ms=args.slow_max_ms)
    if args.quick:
        values.update(QUICK)
    settings = BenchmarkSettings(**values)
    command = shlex.join([".venv/bin/python", "loadtest/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    run_benchmark(settings, args.deployed_onnx, args.parity_onnx, Path(__file__).with_name("locustfile.py"),
                  args.workdir, args.report, command, progress=lambda line: print(line, flush=True))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
