"""Build the shipped default: LeNet-5 on Fashion-MNIST served directly and behind two codes side by side,
ParM (k=2, a trained parity model) and NeRCC (K=8, one straggler, 9 workers running LeNet-5 itself), and
Coded-InvNet (k=4) with its own invertible classifier; export to ONNX, measure each code's degraded-mode
accuracy and compute overhead, write the repository.

Usage: .venv/bin/python export/build_default.py [--out build/default] [--repository model_repository]
           [--deployed-onnx model_repository/lenet5/1/model.onnx] [--parity-arch own|wide] [--parity-epochs 20]
           [--invnet-dir build/invnet]
Re-running resumes from <out>/checkpoints/ (a finished stage is reused, not retrained).
``--deployed-onnx`` adopts an existing deployed model (e.g. the shipped one) instead of training LeNet-5.
Coded-InvNet's files come from export/train_invnet.py (``--invnet-dir``, its report ``--invnet-training``);
its figures are measured through a live tritonserver, each data member unloaded in turn.
The figures land in reports/default_models.json; ./demo.sh prints them beside its sample queries.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from coded_serving.benchmarks.compute import code_overhead, onnx_macs
from coded_serving.benchmarks.invnet import measure_invnet
from coded_serving.benchmarks.report_sections import machine_description
from coded_serving.codes import CodeSpec, make_code
from coded_serving.codes.invnet import MLPHead
from coded_serving.codes.stragglers import straggler_patterns
from coded_serving.deployment.builder import (
    DEFAULT_DEPLOYED_ONNX as DEPLOYED_ONNX, DEFAULT_INVNET, DEFAULT_INVNET_K, DEFAULT_NERCC,
    DEFAULT_PARITY_ONNX as PARITY_ONNX, INVNET_FEATURES_ONNX, INVNET_HEAD_FILE, default_repository_spec, invnet_backup_onnx,
)
from coded_serving.deployment.config_writer import write_repository
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT
from coded_serving.training.build import own_architecture
from coded_serving.training.data import load_fashion_mnist
from coded_serving.training.onnx_export import export_onnx
from coded_serving.training.parity_recipe import WideLeNet, train_parity
from coded_serving.training.parm import accuracy, predict_logits, train_classifier
from coded_serving.training.tuning import TuningGrid, onnx_predict, score, worker_results

ARCH = "lenet5"
ONNX_CHECK_SIZE = 64
PARITY_ARCHS = {
    "wide": "WideLeNet: conv 32-64 (5x5, batch norm), dense 256-128-10, from scratch",
    "own": "the deployed LeNet-5's own graph, started from the deployed weights",
}


def _timing(history: list[dict]) -> dict:
    """Covers the epochs trained by this invocation only (none when a finished checkpoint was reused)."""
    seconds = sum(record["seconds"] for record in history)
    return {
        "epochs_trained_this_run": len(history),
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / len(history), 2) if history else None,
    }


def deployed_model(args: argparse.Namespace, data, checkpoints: Path, history: list[dict]) -> torch.nn.Module:
    """LeNet-5 trained here (resumable), or the adopted ONNX file's graph, frozen."""
    if args.deployed_onnx is None:
        return train_classifier(ARCH, data, args.epochs, args.seed, checkpoint_path=checkpoints / f"{ARCH}.pt",
                                history=history)
    deployed = own_architecture(args.out / DEPLOYED_ONNX).eval()
    for parameter in deployed.parameters():
        parameter.requires_grad_(False)
    return deployed


def parity_model(args: argparse.Namespace, deployed, code, data, checkpoints: Path, history: list[dict]):
    """The ParM parity model by training.parity_recipe; a finished checkpoint of the same settings is reused."""
    settings = {"arch": args.parity_arch, "k": code.k, "epochs": args.parity_epochs, "lr": args.parity_lr,
                "distill_weight": args.distill_weight, "seed": args.seed,
                "deployed_sha256": _digest(args.out / DEPLOYED_ONNX)}
    parity = WideLeNet() if args.parity_arch == "wide" else own_architecture(args.out / DEPLOYED_ONNX)
    checkpoint = checkpoints / f"{PARITY_ONNX.removesuffix('.onnx')}.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=True)
        if saved["settings"] == settings:
            parity.load_state_dict(saved["model"])
            history.extend(saved["history"])
            return parity.eval(), saved["history"], False
    parity = train_parity(deployed, code, parity, data, args.parity_epochs, args.seed, lr=args.parity_lr,
                          distill_weight=args.distill_weight, history=history)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"settings": settings, "model": parity.state_dict(), "history": history}, checkpoint)
    return parity, history, True


def _digest(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


def measure(spec: CodeSpec, deployed_onnx: Path, coded_onnx: Path, images: np.ndarray, labels: np.ndarray,
            threads: int) -> dict:
    """Offline, as the accuracy benchmark pools it: each worker missing in turn, every original it leaves
    missing counted once; and the accuracy with every worker up."""
    code = make_code(spec)
    groups = len(images) // code.k
    grouped = images[: groups * code.k].reshape(groups, code.k, *images.shape[1:])
    truth = labels[: groups * code.k].reshape(groups, code.k)
    deployed_logits = onnx_predict(deployed_onnx, threads, 1024)(grouped.reshape(-1, *images.shape[1:]))
    deployed_logits = deployed_logits.reshape(groups, code.k, -1)
    results = worker_results(code, onnx_predict(coded_onnx, threads, 1024), grouped, deployed_logits)
    grid = TuningGrid()
    one_missing = score(code, results, truth, deployed_logits, straggler_patterns(code.num_workers, 1, grid.subsets, grid.seed))
    every_up = code.decode(results, np.ones(code.num_workers, dtype=bool)).argmax(-1)
    return {
        "degraded_accuracy": round(one_missing.degraded_accuracy, 4),
        "recovery_accuracy": round(one_missing.recovery_accuracy, 4),
        "mse": round(one_missing.mse, 4),
        "available_accuracy": round(float(np.mean(every_up == truth)), 4),
        "test_images": groups * code.k,
    }


def overhead_figures(spec: CodeSpec, deployed_macs: int, coded_macs: int | None, output_size: int = 10) -> dict:
    overhead = code_overhead(spec, deployed_macs, coded_macs, output_size=output_size)
    built = make_code(spec)
    return {
        "workers": built.num_workers,
        "data_queries_per_group": built.k,
        "extra_workers_per_query": round(overhead.extra_workers_per_query, 4),
        "redundant_macs_per_query": round(overhead.macs),
        "redundant_model_macs_per_query": round(overhead.model_macs),
        "codec_macs_per_query": round(overhead.codec_macs),
        "redundant_macs_relative_to_deployed": round(overhead.relative, 3),
    }


def invnet_entry(args: argparse.Namespace, test) -> dict:
    """Coded-InvNet at k = DEFAULT_INVNET_K: the files export/train_invnet.py wrote, copied to ``args.out`` and
    measured as served (the accuracy benchmark's pinned placement, every data member unloaded in turn)."""
    k = DEFAULT_INVNET_K
    files = (INVNET_FEATURES_ONNX, invnet_backup_onnx(k), INVNET_HEAD_FILE)
    missing = [name for name in files if not (args.invnet_dir / name).is_file()]
    if missing:
        raise SystemExit(f"{args.invnet_dir} lacks {missing}: run .venv/bin/python export/train_invnet.py first")
    for name in files:
        shutil.copyfile(args.invnet_dir / name, args.out / name)
    training = json.loads(args.invnet_training.read_text())
    generator = training["generators"][str(k)]
    served = measure_invnet(args.out, (k,), test.images, test.labels, args.out / "served")[k]
    head = MLPHead.load(args.out / INVNET_HEAD_FILE)
    deployed_macs = onnx_macs(args.out / INVNET_FEATURES_ONNX) + sum(weight.size for weight, _ in head.layers)
    backup_macs = onnx_macs(args.out / invnet_backup_onnx(k))
    spec = CodeSpec("coded-invnet", k, {"head_file": INVNET_HEAD_FILE})
    classifier = training["classifier"]
    return {
        "code": spec.to_dict(),
        "tolerates": f"1 missing result per group of {k}",
        "deployed": {
            "arch": "i-ResNet",
            "layers": f"invertible f (residual blocks {classifier['blocks']}, widths {classifier['hidden']}), "
                      f"MLP head h (hidden {classifier['head_hidden']})",
            "test_accuracy": round(served["available_accuracy"], 4),
            "macs_per_query": deployed_macs,
            "head_runs_in": f"the decoder model {DEFAULT_INVNET}_decoder, for every answer (members return features)",
        },
        "backup": {
            "trained_by": f"export/train_invnet.py ({args.invnet_training.name}, {training['date']})",
            "macs_per_call": backup_macs,
            "offline_degraded_accuracy": generator["test"]["degraded_accuracy"],
            # g untrained outputs the mean image of the group: what the learned backup encoder improves on
            "mean_image_baseline_degraded_accuracy": generator["test_mean_image"]["degraded_accuracy"],
        },
        "test": {
            "degraded_accuracy": round(served["degraded_accuracy"], 4),
            "recovery_accuracy": round(served["recovery_accuracy"], 4),
            "available_accuracy": round(served["available_accuracy"], 4),
            "test_images": served["queries"],
            "measured": "served, each data member unloaded in turn",
        },
        # the decoder subtracts features (the head's inputs), not logits
        "overhead": overhead_figures(spec, deployed_macs, backup_macs, output_size=head.layers[0][0].shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "build" / "default", help="ONNX files, checkpoints")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "default_models.json")
    parser.add_argument("--deployed-onnx", type=Path, help="adopt this deployed model instead of training LeNet-5")
    parser.add_argument("--epochs", type=int, default=10, help="deployed model epochs")
    parser.add_argument("--parity-arch", choices=sorted(PARITY_ARCHS), default="own")
    parser.add_argument("--parity-epochs", type=int, default=20)
    parser.add_argument("--parity-lr", type=float, default=1e-3, help="Adam's initial rate, cosine decay to 0")
    parser.add_argument("--distill-weight", type=float, default=1.0, help="weight of the decoded distillation term")
    parser.add_argument("--invnet-dir", type=Path, default=PROJECT_ROOT / "build" / "invnet",
                        help="Coded-InvNet's files from export/train_invnet.py")
    parser.add_argument("--invnet-training", type=Path, default=PROJECT_ROOT / "reports" / "invnet.json",
                        help="export/train_invnet.py's report for those files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    started, started_cpu = time.perf_counter(), time.process_time()
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(seed=args.seed)
    test = data.test
    checkpoints = args.out / "checkpoints"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.deployed_onnx is not None and args.deployed_onnx.resolve() != (args.out / DEPLOYED_ONNX).resolve():
        shutil.copyfile(args.deployed_onnx, args.out / DEPLOYED_ONNX)  # before the repository is rewritten

    deployed_history: list[dict] = []
    deployed = deployed_model(args, data, checkpoints, deployed_history)
    if args.deployed_onnx is None:
        deployed_diff = export_onnx(deployed, args.out / DEPLOYED_ONNX, check_inputs=test.images[:ONNX_CHECK_SIZE])
    else:
        deployed_diff = None
    parm_spec = CodeSpec("parm-addition", 2)
    parm = make_code(parm_spec)
    parity, parity_history, trained = parity_model(args, deployed, parm, data, checkpoints, [])
    groups = test.images[: ONNX_CHECK_SIZE * parm.k].reshape(ONNX_CHECK_SIZE, parm.k, *test.images.shape[1:])
    parity_diff = export_onnx(parity, args.out / PARITY_ONNX, check_inputs=parm.encode(groups)[:, 0])

    deployed_onnx, parity_onnx = args.out / DEPLOYED_ONNX, args.out / PARITY_ONNX
    deployed_macs, parity_macs = onnx_macs(deployed_onnx), onnx_macs(parity_onnx)
    threads = args.threads
    parm_figures = measure(parm_spec, deployed_onnx, parity_onnx, test.images, test.labels, threads)
    nercc_figures = measure(DEFAULT_NERCC, deployed_onnx, deployed_onnx, test.images, test.labels, threads)
    metrics = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "load_average_1min": os.getloadavg()[0],
        "command": "export/build_default.py " + " ".join(
            f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items()
            if key not in ("out", "repository", "report", "invnet_dir", "invnet_training") and value is not None),
        "dataset": {"name": "fashion-mnist", "train": len(data.train), "val": len(data.val), "test": len(test),
                    "seed": args.seed},
        "deployed": {
            "arch": ARCH,
            "epochs": args.epochs if args.deployed_onnx is None else None,
            "adopted_from": None if args.deployed_onnx is None else str(args.deployed_onnx),
            "test_accuracy": accuracy(predict_logits(deployed, test.images), test.labels),
            "onnx": DEPLOYED_ONNX,
            "onnx_max_abs_diff": deployed_diff,
            "macs_per_query": deployed_macs,
            **_timing(deployed_history),
        },
        "codes": {
            "lenet5_parm": {
                "code": parm_spec.to_dict(),
                "tolerates": "1 missing result per group of 2",
                "parity": {
                    "arch": PARITY_ARCHS[args.parity_arch],
                    "recipe": "MSE to the sum of F's logits + KL(F(x_j) || decoded_j), Adam, cosine lr decay, "
                              "best validation degraded-mode epoch (coded_serving/training/parity_recipe.py)",
                    "epochs": args.parity_epochs,
                    "lr": args.parity_lr,
                    "distill_weight": args.distill_weight,
                    "best_val_degraded_accuracy": max(r["val_degraded_accuracy"] for r in parity_history),
                    "onnx": PARITY_ONNX,
                    "onnx_max_abs_diff": parity_diff,
                    "macs_per_call": parity_macs,
                    **_timing(parity_history),  # when it was trained (this run or an earlier one)
                    "trained_this_run": trained,
                },
                "test": parm_figures,
                "overhead": overhead_figures(parm_spec, deployed_macs, parity_macs),
            },
            "lenet5_nercc": {
                "code": DEFAULT_NERCC.to_dict(),
                "tolerates": "any number missing (accuracy degrades); measured with 1 of 9 missing",
                "chosen_by": "reports/accuracy.md, section Tuning (validation split, LeNet-5, K=8, S=1)",
                "test": nercc_figures,
                "overhead": overhead_figures(DEFAULT_NERCC, deployed_macs, None),
            },
            DEFAULT_INVNET: invnet_entry(args, test),
        },
        "total_seconds": round(time.perf_counter() - started, 1),
        "total_cpu_seconds": round(time.process_time() - started_cpu, 1),
    }
    history = {"deployed": deployed_history, "parity": parity_history}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(metrics | {"history": history}, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    write_repository(default_repository_spec(args.out), args.repository)
    print(f"wrote {args.repository}")


if __name__ == "__main__":
    main()
