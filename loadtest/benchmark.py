"""Tail latency under stragglers and failures: the coded ensemble against its baselines.

    .venv/bin/python loadtest/benchmark.py

Serves the coded ensemble and the baselines from one benchmark repository (built from the shipped
ONNX files) on one tritonserver, runs every scenario with locust, and writes
reports/tail_latency.md with its plots. About 7 to 8 minutes with the defaults; ``--quick`` for a
smoke run of about 2 minutes (figures too short for the tail).

    .venv/bin/python loadtest/benchmark.py --sweep

The load sweep instead (reports/load_sweep.md): no redundancy, Equal-Resources, hedged requests and the
coded ensemble (dedicated parity; redundancy on every worker) at 20/40/60/80 % of Equal-Resources'
capacity measured in the same run, 5 ms emulated service time, under an intermittently slow, a
persistently slow and a killed worker. About 25 minutes; ``--sweep --quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields, replace
from pathlib import Path

from coded_serving.deployment.launcher import PROJECT_ROOT
import time
from datetime import datetime, timezone
import os

from coded_serving.benchmarks.report_sections import machine_description
from coded_serving.benchmarks.tail import (
    SWEEP_CONDITIONS, BenchmarkSettings, RunInfo, SweepSettings, git_revision, run_benchmark, run_sweep,
    write_sweep_report,
)

QUICK = dict(duration_s=8.0, short_duration_s=6.0, saturation_duration_s=4.0, failure_at_s=3.0, batches=())
#: a smoke run of the sweep: seconds per run, one load, one hedge delay
SWEEP_QUICK = dict(loads=(0.4,), hedge_delays_ms=(10.0,), duration_s=3.0, goal_duration_s=3.0, goal_rounds=1,
                   warmup_s=0.5, capacity_duration_s=2.0, failure_at_s=1.5, users=16, capacity_users=16)


def sweep_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="the load sweep (see loadtest/benchmark.py's docstring)")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--quick", action="store_true", help="seconds per run, one load: a smoke test")
    defaults = SweepSettings()
    parser.add_argument("--loads", type=float, nargs="+", default=list(defaults.loads))
    parser.add_argument("--conditions", nargs="+", choices=SWEEP_CONDITIONS, default=list(defaults.conditions))
    parser.add_argument("--hedge-delays-ms", type=float, nargs="+", default=list(defaults.hedge_delays_ms))
    for name in ("k", "batch", "service_ms", "deadline_ms", "deadline_min_ms", "duration_s", "goal_duration_s",
                 "goal_rounds", "warmup_s", "capacity_duration_s", "users", "persistent_extra_ms"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)),
                            default=getattr(defaults, name))
    parser.add_argument("--deployed-onnx", type=Path, default=PROJECT_ROOT / "model_repository/lenet5/1/model.onnx")
    parser.add_argument("--parity-onnx", type=Path,
                        default=PROJECT_ROOT / "model_repository/lenet5_parm_coded_0/1/model.onnx")
    parser.add_argument("--workdir", type=Path, default=PROJECT_ROOT / "build/load_sweep")
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports/load_sweep.md")
    args = parser.parse_args(argv)
    values = dict(loads=tuple(args.loads), conditions=tuple(args.conditions),
                  hedge_delays_ms=tuple(args.hedge_delays_ms), failure_at_s=min(defaults.failure_at_s,
                                                                               args.duration_s / 2))
    values.update({name: getattr(args, name) for name in ("k", "batch", "service_ms", "deadline_ms", "deadline_min_ms",
                                                          "duration_s", "goal_duration_s", "goal_rounds", "warmup_s",
                                                          "capacity_duration_s", "users", "persistent_extra_ms")})
    if args.quick:
        values.update(SWEEP_QUICK)
    settings = SweepSettings(**values)
    command = shlex.join([".venv/bin/python", "loadtest/benchmark.py", *argv])
    started, load_average = time.monotonic(), os.getloadavg()
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run = run_sweep(settings, args.deployed_onnx, args.parity_onnx, Path(__file__).with_name("locustfile.py"),
                    args.workdir, progress=lambda line: print(line, flush=True))
    info = RunInfo(command, started_at, (time.monotonic() - started) / 60, machine_description(),
                   "tritonserver (nvidia-pytriton wheel)", git_revision(), load_average)
    write_sweep_report(args.report, info, run, args.workdir / "runs")
    print(f"report: {args.report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if "--sweep" in arguments:
        return sweep_main(arguments)
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
