"""Tune the training-free codes on the validation split, per deployed model and (N, K, S): the worker
point set of Berrut and NeRCC (and of their systematic variants) and NeRCC's lambda_enc / lambda_dec.

    .venv/bin/python export/tune_codes.py [--out build/accuracy]

Needs the deployed ONNX files of export/train_grid.py; results are cached in <out>/tuning.json per
deployed model (its ONNX digest) and grid. export/benchmark_accuracy.py runs this stage itself.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from coded_serving.benchmarks.accuracy import DEFAULT_OUT, AccuracyGrid, BenchmarkPaths, tune_grid
from coded_serving.training.data import load_fashion_mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--archs", nargs="+", default=list(AccuracyGrid().archs))
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime threads (two thrash on a busy 2-core machine)")
    args = parser.parse_args()
    grid = dataclasses.replace(AccuracyGrid(), archs=tuple(args.archs))
    paths = BenchmarkPaths(args.out)
    for arch, cases in tune_grid(grid, load_fashion_mnist(), paths.models, paths.tuning, args.threads).items():
        for key, tuned in cases.items():
            print(f"{arch} {key}: {tuned.code.params} val degraded {tuned.score.degraded_accuracy:.4f}")


if __name__ == "__main__":
    main()
