"""Soak the shipped coded ensemble and write reports/soak.md: under member churn (the default), or
with one member hung (``--hung-member``: every execute of member 0 sleeps an hour) under open-loop
traffic, sampling the server's threads and memory.

    .venv/bin/python loadtest/soak.py [--seconds 120]
    .venv/bin/python loadtest/soak.py --hung-member --seconds 600 [--rate 20] [--note "what else ran"]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import threading
import tempfile
from pathlib import Path

from coded_serving.training.data import load_fashion_mnist
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT, ServerConfig, TritonServer, free_port
from coded_serving.benchmarks.report_sections import machine_description
from coded_serving.benchmarks.soak import hung_member_repository, run_hung_member, run_soak

MEMBERS = ["lenet5_parm_member_0", "lenet5_parm_member_1", "lenet5_parm_coded_0"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--churn-every-s", type=float, default=2.0)
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "soak.md")
    parser.add_argument("--hung-member", action="store_true", help="member 0 never answers; open-loop traffic")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s with --hung-member")
    parser.add_argument("--note", default="", help="what else the machine was doing, for the report")
    args = parser.parse_args(argv)
    images = load_fashion_mnist().test.images[:1024]
    if args.hung_member:
        return hung_member_report(args, images)
    config = ServerConfig(DEFAULT_REPOSITORY, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with tempfile.TemporaryDirectory() as tmp, TritonServer(config, Path(tmp) / "server.log") as server:
        result = run_soak(config.http_url, server.pid, "lenet5_parm", MEMBERS, images, args.seconds,
                          args.clients, args.churn_every_s)
    lines = [
        "# Soak under member churn",
        "",
        f"Regenerate: `.venv/bin/python loadtest/soak.py --seconds {args.seconds:.0f}`. Run "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine_description()}.",
        "",
        f"`lenet5_parm` (shipped repository) on the wheel's tritonserver; {args.clients} HTTP clients sending batches "
        f"of 2 without pause; every {args.churn_every_s:g} s one member, drawn at random, is unloaded and loaded "
        "back half-way through.",
        "",
        "| seconds | requests | queries | reconstructed | lost requests (errors) | churn events | "
        "server RSS before MB | after MB |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result.seconds:.0f} | {result.requests} | {result.queries} | {result.reconstructed} "
        f"({result.reconstructed / max(result.queries, 1):.1%}) | {len(result.errors)} | {result.churn_events} | "
        f"{result.rss_before_mb:.0f} | {result.rss_after_mb:.0f} |",
    ]
    if result.errors:
        lines += ["", "Errors (first 5):", "", *[f"- `{error}`" for error in result.errors[:5]]]
    return write_section(args.report, "# Soak under member churn", lines, 1 if result.errors else 0)


def write_section(report: Path, heading: str, lines: list[str], status: int) -> int:
    """Replace this soak's section of the report (each mode keeps its own), print it."""
    sections = {}
    if report.exists():
        current = None
        for line in report.read_text().splitlines():
            if line.startswith("# "):
                current = line
                sections[current] = []
            elif current:
                sections[current].append(line)
    sections[heading] = lines[1:]
    report.parent.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join("\n".join([title, *body]).strip() for title, body in sections.items())
    report.write_text(text + "\n")
    print("\n".join(lines))
    return status


def hung_member_report(args, images) -> int:
    timeout_ms = 5000.0
    loads, done = [], threading.Event()

    def sample_load() -> None:  # what else the machine was doing: its 1-minute load average
        while not done.wait(5.0):
            loads.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        repository = hung_member_repository(Path(tmp), MEMBERS[0], timeout_ms=timeout_ms)
        config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        with TritonServer(config, Path(tmp) / "server.log") as server:
            result = run_hung_member(config.http_url, server.pid, "lenet5_parm", images, args.seconds, args.rate)
    done.set()
    load = (f" 1-minute load average during the run: mean {sum(loads) / len(loads):.1f}, max {max(loads):.1f} "
            f"on {os.cpu_count()} cores (this soak included)." if loads else "")
    samples = result.samples
    warm = next((s for s in samples if s[0] >= 10), samples[0])
    late = result.latencies_ms and max(result.latencies_ms) >= timeout_ms
    lines = [
        "# Soak with a hung member",
        "",
        f"Regenerate: `.venv/bin/python loadtest/soak.py --hung-member --seconds {args.seconds:.0f} --rate {args.rate:g}`. "
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine_description()}."
        + load + (f" Meanwhile: {args.note}." if args.note else ""),
        "",
        f"`lenet5_parm` (shipped models) on the wheel's tritonserver; `{MEMBERS[0]}` sleeps an hour in every execute "
        f"(it never answers); timeout_ms {timeout_ms:g}. Open-loop HTTP traffic at {args.rate:g} req/s, batches of 1..4. "
        "Server RSS and threads are those of its whole process session (server and backend stubs), sampled each second.",
        "",
        "| seconds | sent | answered | with a reconstruction | lost (errors) | latency p50 / p99 / max ms | "
        "threads at 10 s / max / end | RSS MB at 10 s / max / end |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result.seconds:.0f} | {result.sent} | {result.answered} | {result.reconstructed_requests} | "
        f"{len(result.errors)} | {result.latency_ms(0.5):.1f} / {result.latency_ms(0.99):.1f} / "
        f"{max(result.latencies_ms, default=float('nan')):.1f} | {warm[2]} / {max(s[2] for s in samples)} / "
        f"{samples[-1][2]} | {warm[1]:.0f} / {max(s[1] for s in samples):.0f} / {samples[-1][1]:.0f} |",
    ]
    if result.errors:
        lines += ["", "Errors (first 5):", "", *[f"- `{error}`" for error in result.errors[:5]]]
    return write_section(args.report, lines[0], lines, 1 if result.errors or late else 0)


if __name__ == "__main__":
    sys.exit(main())
