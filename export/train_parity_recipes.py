"""Benchmark: ParM parity models for the shipped LeNet-5 (addition encoder) with the distilled recipe
(coded_serving/training/parity_recipe.py), at k = 2 and 8: LeNet-5's own graph started from the deployed
weights, WideLeNet at several widths and recipe options, and a small ResNet (ResParity) at k = 8.
Offline figures on the 10k test images.

Usage: nice -n 19 .venv/bin/python export/train_parity_recipes.py [--runs arch:k:epochs[:key=value,...] ...]
  arch: own | wide | res; keys (OPTIONS): lr, w (KL weight), T (KL temperature), mse (MSE weight), centred (0/1),
  shift (augmentation, pixels), bs (groups per batch), width (WideLeNet conv1-conv2-dense1-dense2; ResParity
  stage channels then the dense width, e.g. 32-64-128-256), blocks (ResParity residual blocks per stage).
  The default --runs are the earlier runs and the best k = 2 and k = 8 recipes found so far.
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
from coded_serving.training.parity_recipe import ResParity, WideLeNet, train_parity
from coded_serving.training.parm import evaluate_degraded

LR = {"own": 1e-3, "wide": 2e-3, "res": 2e-3}
#: ResParity's width when a run names none (OPTIONS' default width is WideLeNet's)
RES_WIDTH = "32-64-128-256"
#: run options: spec key -> (train_parity keyword or architecture setting, type, default)
OPTIONS = {"lr": ("lr", float, None), "w": ("distill_weight", float, 1.0), "T": ("temperature", float, 1.0),
           "mse": ("mse_weight", float, 1.0), "centred": ("centred", int, 0), "shift": ("max_shift", int, 0),
           "bs": ("batch_size", int, 64), "width": ("width", str, "32-64-256-128"),
           "blocks": ("blocks", int, 1)}
#: the earlier runs, then the best k = 2 and k = 8 recipes: centred MSE, KL weight 2, wider dense layers (and
#: convolutions at k = 8), more epochs; last a residual parity model at k = 8, where WideLeNet still underfits
RUNS = ["own:2:20", "wide:2:20", "wide:2:25:centred=1,w=2,lr=0.003,width=32-64-512-256",
        "own:8:30", "wide:8:30", "wide:8:60:centred=1,w=2,lr=0.003,width=48-96-512-256",
        "wide:8:100:centred=1,w=2,lr=0.003,width=48-96-512-256",
        "res:8:100:centred=1,w=2,lr=0.003,width=48-96-192-256"]
#: the reference recipe's served figures (reports/accuracy.md, section ParM: same architecture from scratch, MSE)
REFERENCE = [{"k": 2, "epochs": 30, "degraded_accuracy": 0.822, "recovery_accuracy": 0.864},
             {"k": 8, "epochs": 90, "degraded_accuracy": 0.546, "recovery_accuracy": 0.554}]


def parse_run(spec: str) -> tuple[str, int, int, dict]:
    """``arch:k:epochs[:key=value,...]`` with keys from OPTIONS; the defaults are the earlier runs' recipe."""
    arch, k, epochs, *rest = spec.split(":")
    options = {key: default for key, (_, _, default) in OPTIONS.items()} | {"lr": LR[arch]}
    if arch == "res":
        options["width"] = RES_WIDTH
    for item in (rest[0].split(",") if rest else []):
        key, value = item.split("=")
        options[key] = OPTIONS[key][1](value)
    return arch, int(k), int(epochs), options


def tag(arch: str, k: int, epochs: int, options: dict) -> str:
    """Names the cached run; the options at their defaults are left out, so earlier runs keep their names."""
    extra = [f"{key}{options[key]}" for key in OPTIONS if key not in ("lr", "w")
             and options[key] != OPTIONS[key][2]]
    return "_".join([f"{arch}_k{k}_e{epochs}_lr{options['lr']}_w{options['w']}", *extra])


def recipe_name(options: dict, arch: str) -> str:
    """"distilled", then the options that differ from the earlier runs' recipe."""
    labels = {"lr": f"lr {options['lr']:g}", "w": f"KL weight {options['w']:g}", "T": f"T {options['T']:g}",
              "mse": f"MSE weight {options['mse']:g}", "centred": "centred MSE", "shift": f"shifts {options['shift']}px",
              "bs": f"batch {options['bs']}"}
    defaults = {key: default for key, (_, _, default) in OPTIONS.items()} | {"lr": LR[arch]}
    return ", ".join(["distilled", *(labels[key] for key in labels if options[key] != defaults[key])])


def parity_name(arch: str, width: str, blocks: int = 1) -> str:
    if arch == "own":
        return "LeNet-5 (deployed weights)"
    if arch == "res":
        *channels, hidden = width.split("-")
        return f"ResNet {'-'.join(channels)} x{blocks} / {hidden}"
    c1, c2, h1, h2 = width.split("-")
    return f"WideLeNet {c1}-{c2} / {h1}-{h2}"


def make_parity(arch: str, options: dict, deployed_onnx: Path) -> torch.nn.Module:
    sizes = [int(n) for n in options["width"].split("-")]
    if arch == "res":
        return ResParity(tuple(sizes[:-1]), sizes[-1], options["blocks"])
    if arch == "wide":
        return WideLeNet((sizes[0], sizes[1]), (sizes[2], sizes[3]))
    return own_architecture(deployed_onnx)


def run(spec: str, deployed_onnx: Path, data, out: Path, threads: int) -> dict:
    arch, k, epochs, options = parse_run(spec)
    name = tag(arch, k, epochs, options)
    saved = out / f"{name}.json"
    deployed = own_architecture(deployed_onnx).eval()
    for parameter in deployed.parameters():
        parameter.requires_grad_(False)
    parity = make_parity(arch, options, deployed_onnx)
    code = make_code(CodeSpec("parm-addition", k))
    if saved.exists():
        figures = json.loads(saved.read_text())
        parity.load_state_dict(torch.load(out / f"{name}.pt", weights_only=True))
    else:
        torch.set_num_threads(threads)
        start, history = time.perf_counter(), []
        keywords = {OPTIONS[key][0]: value for key, value in options.items() if key not in ("width", "blocks")}
        keywords["centred"] = bool(keywords["centred"])
        parity = train_parity(deployed, code, parity, data, epochs, 0, history=history, **keywords)
        figures = {"arch": arch, "k": k, "epochs": epochs, "lr": options["lr"], "w": options["w"], "options": options,
                   "seconds": time.perf_counter() - start,
                   "test": evaluate_degraded(deployed, parity, code, data.test.images, data.test.labels),
                   "best_val": max(h["val_degraded_accuracy"] for h in history), "history": history}
        out.mkdir(parents=True, exist_ok=True)
        torch.save(parity.state_dict(), out / f"{name}.pt")
        saved.write_text(json.dumps(figures))
    export_onnx(parity.eval(), out / f"{name}.onnx")
    return {"k": k, "parity": parity_name(arch, options["width"], options["blocks"]), "epochs": epochs,
            "recipe": recipe_name(options, arch),
            "lr": options["lr"], "options": options, "run": spec,
            "macs_per_call": onnx_macs(out / f"{name}.onnx"), "test": figures["test"],
            "best_val_degraded_accuracy": figures["best_val"], "train_seconds": figures["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=RUNS,
                        help="arch:k:epochs[:key=value,...], keys " + " ".join(OPTIONS))
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
        runs.append(run(spec, args.deployed_onnx, data, args.out, args.threads))
    runs.sort(key=lambda r: (r["k"], r["macs_per_call"], r["recipe"] != "reference (served)"))
    from coded_serving.training.parm import accuracy, predict_logits
    deployed_accuracy = accuracy(predict_logits(own_architecture(args.deployed_onnx).eval(), data.test.images),
                                 data.test.labels)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "command": "nice -n 19 .venv/bin/python export/train_parity_recipes.py --runs " + " ".join(args.runs),
        "deployed_macs": deployed_macs,
        "deployed_accuracy": deployed_accuracy,
        "runs": runs,
    }
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
