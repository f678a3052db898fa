"""Export a coded deployment: from a deployed classifier to a ready Triton model repository.

    # ours: train LeNet-5 (or the MLP) on Fashion-MNIST, then its ParM parity model
    .venv/bin/python export/export_model.py --deployed lenet5 --code parm-addition --k 2 --repository my_repository
    # yours: an ONNX file (or a TorchScript module, torch.jit.save) and its training images as .npy
    .venv/bin/python export/export_model.py --deployed model.onnx --images train.npy [--labels labels.npy] \\
        --code parm-addition --k 2 --repository my_repository
    # a training-free code: nothing is trained (the images give the validation figure)
    .venv/bin/python export/export_model.py --deployed model.onnx --images train.npy --code berrut --k 4 \\
        --num-workers 6 --worker-points approxifer --repository my_repository

The repository serves the deployed model as <name> and the coded ensemble as <name>_parm, <name>_berrut
or <name>_nercc (members, encoder, decoder), both with the deployed model's tensor names, on this project's launcher
(`coded-serving serve --model-repository ...`) or on the NGC Triton image.

User models: the parity model is one of this project's architectures (--parity-arch), which take
[1, 28, 28] images and return 10 logits; the frozen deployed model gives the targets (run with
onnxruntime for an ONNX file). Without --labels, its own predictions stand in for labels.

GPU: --accelerator tensorrt writes ONNX Runtime's TensorRT execution accelerator (FP16) into every
member's config (optimization.execution_accelerators.gpu_execution_accelerator); the NGC image then runs
the members through TensorRT, and this project's CPU backend ignores it. For a native TensorRT plan
instead, convert each member's 1/model.onnx on the serving GPU (trtexec --onnx=model.onnx
--saveEngine=model.plan) and set `platform: "tensorrt_plan"` in its config: plans are specific to a GPU
and TensorRT version, so this command does not write them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from coded_serving.codes import CodeSpec
from coded_serving.training.data import load_fashion_mnist
from coded_serving.training.pipeline import export_deployment, load_deployed, user_dataset
from coded_serving.deployment.launcher import PROJECT_ROOT
from coded_serving.training.nets import ARCHITECTURES
from coded_serving.training.onnx_export import export_onnx
from coded_serving.deployment.config_writer import write_repository
from coded_serving.training.parm import train_classifier


def code_spec(args: argparse.Namespace) -> CodeSpec:
    params: dict = {}
    if args.code in ("berrut", "nercc"):
        params = {"num_workers": args.num_workers or args.k + 1, "systematic": args.systematic}
        if args.worker_points:
            params["worker_points"] = args.worker_points
        if args.code == "nercc":
            params |= {"lambda_enc": args.lambda_enc, "lambda_dec": args.lambda_dec}
    return CodeSpec(args.code, args.k, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployed", required=True,
                        help=f"{' or '.join(ARCHITECTURES)}, or a .onnx / TorchScript file")
    parser.add_argument("--images", type=Path, help="a user model's training images, .npy [N, 1, 28, 28] float32")
    parser.add_argument("--labels", type=Path, help="their labels, .npy [N] (optional)")
    parser.add_argument("--code", choices=["parm-addition", "parm-concatenation", "berrut", "nercc"],
                        default="parm-addition")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--num-workers", type=int, help="berrut/nercc: N (default k + 1)")
    parser.add_argument("--systematic", action="store_true", help="berrut/nercc: originals to k workers")
    parser.add_argument("--worker-points", help="berrut/nercc point set (see coded_serving/codes/interpolation.py)")
    parser.add_argument("--lambda-enc", type=float, default=0.0)
    parser.add_argument("--lambda-dec", type=float, default=0.0)
    parser.add_argument("--parity-arch", choices=sorted(ARCHITECTURES), default="lenet5")
    parser.add_argument("--epochs", type=int, default=10, help="deployed model epochs (ours only)")
    parser.add_argument("--parity-epochs", type=int, default=30)
    parser.add_argument("--name", help="model name (default: the architecture or the file's stem)")
    parser.add_argument("--deadline-ms", type=float, default=10.0)
    parser.add_argument("--accelerator", choices=["tensorrt"], help="GPU: ONNX Runtime's TensorRT accelerator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="ONNX files and checkpoints (default build/export/<name>)")
    parser.add_argument("--repository", type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(2)
    ours = args.deployed in ARCHITECTURES
    name = args.name or (args.deployed if ours else Path(args.deployed).stem)
    out = args.out or PROJECT_ROOT / "build" / "export" / name
    if ours:
        data = load_fashion_mnist(seed=args.seed)
        deployed = train_classifier(args.deployed, data, args.epochs, args.seed,
                                    checkpoint_path=out / "checkpoints" / f"{name}.pt")
        deployed_onnx = out / f"{name}.onnx"
        export_onnx(deployed, deployed_onnx, check_inputs=data.test.images[:64])
    else:
        deployed = load_deployed(Path(args.deployed))
        if args.images is None:
            raise SystemExit("--images is needed with a user model (validation, and parity training for ParM)")
        images = np.load(args.images)
        data = user_dataset(images, np.load(args.labels) if args.labels else None, deployed, seed=args.seed)
        deployed_onnx = Path(args.deployed)
        if deployed_onnx.suffix != ".onnx":
            deployed_onnx = out / f"{name}.onnx"
            export_onnx(deployed, deployed_onnx, sample_shape=images.shape[1:], check_inputs=images[:64])
    spec, facts = export_deployment(deployed, deployed_onnx, data, code_spec(args), out, name, args.parity_arch,
                                    args.parity_epochs, args.seed, args.deadline_ms, args.accelerator)
    write_repository(spec, args.repository)
    print(json.dumps(facts, indent=1))
    print(f"wrote {', '.join(model.name for model in spec.models)} to {args.repository}")


if __name__ == "__main__":
    main()
