"""Train the accuracy benchmark's models: the deployed MLP (784-200-100-10) and LeNet-5 on Fashion-MNIST,
and every ParM parity model of the grid (addition k = 2, 3, 4, 8, 10, 12; concatenation k = 2, 4),
each exported to ONNX and checked against torch.

    .venv/bin/python export/train_grid.py [--out build/accuracy] [--archs mlp lenet5]

Resumable: re-running continues from <out>/models/checkpoints; finished checkpoints of
export/build_default.py (LeNet-5 and its addition k=2 parity model, same seed) are adopted, not retrained.
export/benchmark_accuracy.py runs this stage itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from coded_serving.benchmarks.accuracy import DEFAULT_ADOPT, DEFAULT_OUT, AccuracyGrid, BenchmarkPaths, train_grid
from coded_serving.training.data import load_fashion_mnist
from coded_serving.training.pipeline import TrainingPlan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--archs", nargs="+", default=list(AccuracyGrid().archs))
    parser.add_argument("--adopt", type=Path, default=DEFAULT_ADOPT, help="checkpoints of another build to reuse")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (two thrash on a busy 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = dataclasses.replace(AccuracyGrid(), archs=tuple(args.archs))
    records = train_grid(grid, TrainingPlan(), load_fashion_mnist(), BenchmarkPaths(args.out).models, args.adopt)
    print(json.dumps({name: dataclasses.asdict(record) for name, record in records.items()}, indent=1))


if __name__ == "__main__":
    main()
