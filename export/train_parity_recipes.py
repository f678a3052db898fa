"""Benchmark: ParM parity models for the shipped LeNet-5 (addition encoder) with the distilled recipe
(coded_serving/training/parity_recipe.py), at k = 2 and 8, for two parity sizes: LeNet-5's own graph started
from the deployed weights, and WideLeNet (15x the MACs). Offline figures on the 10k test images.

Usage: nice -n 19 .venv/bin/python export/train_parity_recipes.py [--runs own:2:20 wide:2:20 own:8:30 wide:8:30]
Each run is kept in build/parity_recipes/<tag>.pt/.json and reused by later invocations.
The figures land in reports/parity_recipes.json; `python -m coded_serving.benchmarks.accuracy_report` puts them
in reports/accuracy.md (section Compute). export/build_default.py ships the k = 2 parity of --parity-arch.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from coded_serving.benchmarks.compute import onnx_macs
from coded_serving.benchmarks.report_sections import machine_description
from coded_serving.codes import CodeSpec, make_code
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT
from coded_serving.training.build import own_architecture
from coded_serving.training.data import load_fashion_mnist
from coded_serving.training.onnx_export import export_onnx
from coded_serving.training.parity_recipe import WideLeNet, train_parity
from coded_serving.training.parm import evaluate_degraded

LR = {"own": 1e-3, "wide": 2e-3}
PARITY = {"own": "LeNet-5 (deployed weights)", "wide": "WideLeNet 32-64 / 256-128"}
#: the reference recipe's served figures (reports/accuracy.md, section ParM: same architecture from scratch, MSE)
REFERENCE = [{"k": 2, "epochs": 30, "degraded_accuracy": 0.822, "recovery_accuracy": 0.864},
             {"k": 8, "epochs": 90, "degraded_accuracy": 0.546, "recovery_accuracy": 0.554}]


def run(arch: str, k: int, epochs: int, deployed_onnx: Path, data, out: Path, threads: int) -> dict:
    tag = f"{arch}_k{k}_e{epochs}_lr{LR[arch]}_w1.0"
    saved = out / f"{tag}.json"
    deployed = own_architecture(deployed_onnx).eval()
    for parameter in deployed.parameters():
        parameter.requires_grad_(False)
    parity = WideLeNet() if arch == "wide" else own_architecture(deployed_onnx)
    code = make_code(CodeSpec("parm-addition", k))
    if saved.exists():
        figures = json.loads(saved.read_text())
        parity.load_state_dict(torch.load(out / f"{tag}.pt", weights_only=True))
    else:
        torch.set_num_threads(threads)
        start, history = time.perf_counter(), []
        parity = train_parity(deployed, code, parity, data, epochs, 0, lr=LR[arch], distill_weight=1.0, history=history)
        figures = {"arch": arch, "k": k, "epochs": epochs, "lr": LR[arch], "w": 1.0,
                   "seconds": time.perf_counter() - start,
                   "test": evaluate_degraded(deployed, parity, code, data.test.images, data.test.labels),
                   "best_val": max(h["val_degraded_accuracy"] for h in history), "history": history}
        out.mkdir(parents=True, exist_ok=True)
        torch.save(parity.state_dict(), out / f"{tag}.pt")
        saved.write_text(json.dumps(figures))
    export_onnx(parity.eval(), out / f"{tag}.onnx")
    return {"k": k, "parity": PARITY[arch], "epochs": epochs, "recipe": "distilled", "lr": LR[arch],
            "macs_per_call": onnx_macs(out / f"{tag}.onnx"), "test": figures["test"],
            "best_val_degraded_accuracy": figures["best_val"], "train_seconds": figures["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["own:2:20", "wide:2:20", "own:8:30", "wide:8:30"],
                        help="arch:k:epochs")
    parser.add_argument("--deployed-onnx", type=Path, default=DEFAULT_REPOSITORY / "lenet5" / "1" / "model.onnx")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "build" / "parity_recipes")
    parser.add_argument("--report", type=Path, default=PROJECT_ROOT / "reports" / "parity_recipes.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    data = load_fashion_mnist(seed=0)
    deployed_macs = onnx_macs(args.deployed_onnx)
    runs = [{"k": r["k"], "parity": "LeNet-5 (from scratch)", "epochs": r["epochs"], "recipe": "reference (served)",
             "macs_per_call": deployed_macs, "test": r, "train_seconds": None} for r in REFERENCE]
    for spec in args.runs:
        arch, k, epochs = spec.split(":")
        runs.append(run(arch, int(k), int(epochs), args.deployed_onnx, data, args.out, args.threads))
    runs.sort(key=lambda r: (r["k"], r["macs_per_call"], r["recipe"] != "reference (served)"))
    from coded_serving.training.parm import accuracy, predict_logits
    deployed_accuracy = accuracy(predict_logits(own_architecture(args.deployed_onnx).eval(), data.test.images),
                                 data.test.labels)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "command": "nice -n 19 .venv/bin/python export/train_parity_recipes.py",
        "deployed_macs": deployed_macs,
        "deployed_accuracy": deployed_accuracy,
        "runs": runs,
    }
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
