"""Soak the shipped coded ensemble under member churn and write reports/soak.md.

    .venv/bin/python loadtest/soak.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

from coded_serving.training.data import load_fashion_mnist
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT, ServerConfig, TritonServer, free_port
from coded_serving.benchmarks.report_sections import machine_description
from coded_serving.benchmarks.soak import run_soak

MEMBERS = ["lenet5_parm_member_0", "lenet5_parm_member_1", "lenet5_parm_coded_0"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--churn-every-s", type=float, default=2.0)
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "soak.md")
    args = parser.parse_args(argv)
    images = load_fashion_mnist().test.images[:1024]
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
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
