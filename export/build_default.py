"""Build the shipped default: train LeNet-5 on Fashion-MNIST and its ParM parity model, export both
to ONNX, and write the model repository with the coded ensemble.

Usage: .venv/bin/python export/build_default.py [--out build/default] [--repository model_repository]
Re-running resumes from <out>/checkpoints/ (a finished stage is reused, not retrained).
The figures land in reports/default_models.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from coded_serving.codes import CodeSpec, make_code
from coded_serving.training.data import load_fashion_mnist
from coded_serving.deployment.builder import DEFAULT_DEPLOYED_ONNX as DEPLOYED_ONNX, DEFAULT_PARITY_ONNX as PARITY_ONNX, default_repository_spec
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT
from coded_serving.training.onnx_export import export_onnx
from coded_serving.deployment.config_writer import write_repository
from coded_serving.training.parm import accuracy, evaluate_degraded, predict_logits, train_classifier, train_parity_model

ARCH = "lenet5"
ONNX_CHECK_SIZE = 64


def _timing(history: list[dict]) -> dict:
    """Covers the epochs trained by this invocation only (none when a finished checkpoint was reused)."""
    seconds = sum(record["seconds"] for record in history)
    return {
        "epochs_trained_this_run": len(history),
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / len(history), 2) if history else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "build" / "default", help="ONNX files, checkpoints")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "default_models.json")
    parser.add_argument("--epochs", type=int, default=10, help="deployed model epochs")
    parser.add_argument("--parity-epochs", type=int, default=30, help="parity model epochs (docs/codes.md: still improving at 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = load_fashion_mnist(seed=args.seed)
    spec = CodeSpec("parm-addition", 2)
    code = make_code(spec)
    parity_name = PARITY_ONNX.removesuffix(".onnx")
    checkpoints = args.out / "checkpoints"

    deployed_history: list[dict] = []
    deployed = train_classifier(
        ARCH, data, args.epochs, args.seed, checkpoint_path=checkpoints / f"{ARCH}.pt", history=deployed_history
    )
    parity_history: list[dict] = []
    parity = train_parity_model(
        deployed, code, ARCH, data, args.parity_epochs, args.seed,
        checkpoint_path=checkpoints / f"{parity_name}.pt", history=parity_history,
    )

    test = data.test
    groups = test.images[: ONNX_CHECK_SIZE * code.k].reshape(ONNX_CHECK_SIZE, code.k, *test.images.shape[1:])
    deployed_diff = export_onnx(deployed, args.out / DEPLOYED_ONNX, check_inputs=test.images[:ONNX_CHECK_SIZE])
    parity_diff = export_onnx(parity, args.out / PARITY_ONNX, check_inputs=code.encode(groups)[:, 0])

    metrics = {
        "dataset": {"name": "fashion-mnist", "train": len(data.train), "val": len(data.val), "test": len(test), "seed": args.seed},
        "deployed": {
            "arch": ARCH,
            "epochs": args.epochs,
            "test_accuracy": accuracy(predict_logits(deployed, test.images), test.labels),
            "onnx": DEPLOYED_ONNX,
            "onnx_max_abs_diff": deployed_diff,
            **_timing(deployed_history),
        },
        "parity": {
            "arch": ARCH,
            "code": spec.to_dict(),
            "epochs": args.parity_epochs,
            "test": evaluate_degraded(deployed, parity, code, test.images, test.labels),
            "onnx": PARITY_ONNX,
            "onnx_max_abs_diff": parity_diff,
            **_timing(parity_history),
        },
    }
    history = {"deployed": deployed_history, "parity": parity_history}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(metrics | {"history": history}, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    write_repository(default_repository_spec(args.out), args.repository)
    print(f"wrote {args.repository}")


if __name__ == "__main__":
    main()
