"""Benchmark: train Coded-InvNet on Fashion-MNIST (the invertible classifier, then one backup generator
per k), export everything to ONNX, and write the figures and the training time.

Usage: .venv/bin/python export/train_invnet.py [--out build/invnet] [--ks 2 4 10]
Re-running resumes from <out>/checkpoints/ (times then cover only the work done by that run).
The figures land in reports/invnet.json; export/benchmark_invnet.py measures the served ensembles.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from coded_serving.training.data import load_fashion_mnist
from coded_serving.training.invnet_nets import LIPSCHITZ_COEFF, Backup, SymmetricGenerator
from coded_serving.training.invnet import (
    evaluate_backup, export_invnet, train_generator, train_invertible_classifier,
)
from coded_serving.deployment.launcher import PROJECT_ROOT
from coded_serving.benchmarks.report_sections import machine_description
from coded_serving.training.parm import accuracy, predict_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "build" / "invnet", help="ONNX files, checkpoints")
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "invnet.json")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4, 10])
    parser.add_argument("--epochs", type=int, default=6, help="classifier epochs")
    parser.add_argument("--generator-epochs", type=int, default=3)
    parser.add_argument("--target-groups", type=int, default=12000, help="training groups inverted per k")
    parser.add_argument("--iterations", type=int, default=10, help="fixed-point iterations of the inversion")
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 2], help="residual blocks per stage")
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 64], help="residual branch width per stage")
    parser.add_argument("--head-hidden", type=int, nargs="*", default=[256], help="the head's hidden layers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    started, started_cpu, load_before = time.perf_counter(), time.process_time(), os.getloadavg()
    data = load_fashion_mnist(seed=args.seed)
    test = data.test
    checkpoints = args.out / "checkpoints"

    stage, stage_cpu = time.perf_counter(), time.process_time()
    history: list[dict] = []
    classifier = train_invertible_classifier(
        data, args.epochs, args.seed, tuple(args.blocks), tuple(args.hidden), tuple(args.head_hidden),
        checkpoint_path=checkpoints / "classifier.pt", history=history,
    )
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "threads": args.threads,
        "dataset": {"name": "fashion-mnist", "train": len(data.train), "val": len(data.val), "test": len(test),
                    "seed": args.seed},
        "inversion_iterations": args.iterations,
        "classifier": {
            "blocks": args.blocks, "hidden": args.hidden, "head_hidden": args.head_hidden,
            "lipschitz_coeff": LIPSCHITZ_COEFF, "epochs": args.epochs,
            "test_accuracy": accuracy(predict_logits(classifier, test.images), test.labels),
            "epochs_trained_this_run": len(history),
            "train_seconds": round(time.perf_counter() - stage, 1),
            "cpu_seconds": round(time.process_time() - stage_cpu, 1),
        },
        "generators": {},
    }
    generators, histories = {}, {"classifier": history}
    for k in args.ks:
        stage, stage_cpu = time.perf_counter(), time.process_time()
        generator_history: list[dict] = []
        generators[k], targets = train_generator(
            classifier, k, data, args.generator_epochs, args.seed, args.target_groups, args.iterations,
            checkpoint_path=checkpoints / f"generator_k{k}.pt", history=generator_history,
        )
        seconds, cpu_seconds = time.perf_counter() - stage, time.process_time() - stage_cpu
        report["generators"][str(k)] = {
            "epochs": args.generator_epochs,
            **targets,
            "test": evaluate_backup(classifier, Backup(generators[k], classifier.features), k, test.images, test.labels),
            # g untrained outputs the mean image: what the learned correction is measured against
            "test_mean_image": evaluate_backup(classifier, Backup(SymmetricGenerator(), classifier.features), k,
                                               test.images, test.labels),
            "epochs_trained_this_run": len(generator_history),
            "train_seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
        }
        histories[f"generator_k{k}"] = generator_history
        print(json.dumps(report["generators"][str(k)], indent=2), flush=True)
    report["onnx_max_abs_diff"] = export_invnet(classifier, generators, args.out, test.images)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    # CPU time of all threads: on a machine shared with other jobs, wall time mostly measures them
    report["total_cpu_seconds"] = round(time.process_time() - started_cpu, 1)
    report["load_average_1min"] = {"start": load_before[0], "end": os.getloadavg()[0]}
    report["history"] = histories
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: value for key, value in report.items() if key != "history"}, indent=2))
    print(f"wrote {args.out} and {args.report}")


if __name__ == "__main__":
    main()
