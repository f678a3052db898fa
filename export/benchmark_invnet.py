"""Benchmark: Coded-InvNet's degraded-mode accuracy through a live tritonserver, from the files that
export/train_invnet.py wrote; prints the report section and writes its figures.

Usage: .venv/bin/python export/benchmark_invnet.py [--onnx-dir build/invnet] [--ks 2 4 10]
Writes reports/invnet_accuracy.json (figures) and its section of reports/accuracy.md.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from coded_serving.training.data import load_fashion_mnist
from coded_serving.benchmarks.invnet import invnet_section, measure_invnet
from coded_serving.benchmarks.report_sections import ReportSection, machine_description, update_report
from coded_serving.deployment.launcher import PROJECT_ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", type=Path, default=PROJECT_ROOT / "build" / "invnet")
    parser.add_argument("--training", type=Path, default=PROJECT_ROOT / "reports" / "invnet.json")
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "invnet_accuracy")
    parser.add_argument("--accuracy-report", type=Path, default=PROJECT_ROOT / "reports" / "accuracy.md")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 10])
    args = parser.parse_args()

    test = load_fashion_mnist().test
    served = measure_invnet(args.onnx_dir, tuple(args.ks), test.images, test.labels,
                            args.onnx_dir / "served")
    training = json.loads(args.training.read_text())
    figures = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "served": {str(k): value for k, value in served.items()},
    }
    section = invnet_section(training, served)
    args.report.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    update_report(args.accuracy_report, [ReportSection("coded-invnet", 50, section)])
    print(section)


if __name__ == "__main__":
    main()
