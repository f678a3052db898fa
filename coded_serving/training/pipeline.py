"""The export pipeline: train what a coded deployment needs, export it to ONNX, write the repository.

Deployed classifiers and ParM parity models are trained resumably (``<out>/checkpoints``), exported
to ONNX and checked against torch on held-out inputs; ``<out>/models.json`` keeps what a report
needs about each model (epochs, validation figures, training seconds, the ONNX difference), so a
resumed run still reports models an earlier run trained. The deployed model may also be the
user's own, an ONNX file or a TorchScript module, frozen: its parity model is then one of ours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from coded_serving.codes import Code, CodeSpec, make_code
from coded_serving.training.data import Dataset, Split
from coded_serving.training.onnx_export import export_onnx
from coded_serving.deployment.builder import deployment, onnx_tensors
from coded_serving.specs import RepositorySpec
from coded_serving.training.parm import accuracy, evaluate_degraded, predict_logits, train_classifier, train_parity_model

CHECK_SIZE = 64  # held-out inputs on which every ONNX file is compared with torch


@dataclass(frozen=True)
class ParityModel:
    """A ParM parity model for the deployed ``arch``, of the same architecture."""

    arch: str
    kind: str
    k: int

    @property
    def name(self) -> str:
        return f"{self.arch}_parity_{self.kind}_k{self.k}"

    @property
    def code(self) -> CodeSpec:
        return CodeSpec(self.kind, self.k)


@dataclass(frozen=True)
class TrainingPlan:
    """Epochs per model. An epoch of a parity model sees 1/k of the training set as coding groups,
    so its epochs grow with k (about as many groups for every k), capped to keep the grid in the hour."""

    deployed_epochs: tuple[tuple[str, int], ...] = (("mlp", 20), ("lenet5", 10))
    parity_epochs_per_k: int = 15
    max_parity_epochs: int = 90
    seed: int = 0

    def epochs_of_deployed(self, arch: str) -> int:
        return dict(self.deployed_epochs)[arch]

    def epochs_of_parity(self, k: int) -> int:
        return min(self.max_parity_epochs, self.parity_epochs_per_k * k)


@dataclass
class ModelRecord:
    name: str
    role: str  # "deployed" or "parity"
    arch: str
    epochs: int
    onnx: str  # file name in the output folder
    onnx_max_abs_diff: float
    val: dict[str, float]
    #: summed over the runs that trained it in this output folder (0 for an adopted checkpoint)
    train_seconds: float
    code: dict | None = None
    reused_from: str | None = None


def train_models(
    archs: Iterable[str],
    parities: Iterable[ParityModel],
    plan: TrainingPlan,
    data: Dataset,
    out: Path,
    adopt: Path | None = None,
) -> dict[str, ModelRecord]:
    """Train (or resume, or reuse) and export every deployed model of ``archs`` and every parity model.

    ``adopt``: a folder of checkpoints from another build (export/build_default.py) whose finished
    trainings with the same identity are copied in rather than repeated.
    """
    out = Path(out)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out)
    parities = list(parities)
    for arch in archs:
        history: list[dict] = []
        path = checkpoints / f"{arch}.pt"
        reused = _adopt(adopt, path, {"task": "classifier", "arch": arch, "seed": plan.seed})
        deployed = train_classifier(arch, data, plan.epochs_of_deployed(arch), plan.seed, checkpoint_path=path,
                                    history=history)
        diff = export_onnx(deployed, out / f"{arch}.onnx", check_inputs=data.test.images[:CHECK_SIZE])
        val = {"accuracy": accuracy(predict_logits(deployed, data.val.images), data.val.labels)}
        seconds, reused = _provenance(manifest.get(arch), history, reused)
        manifest[arch] = ModelRecord(arch, "deployed", arch, _epochs(path), f"{arch}.onnx", diff, val, seconds,
                                     reused_from=reused)
        write_manifest(out, manifest)
        for parity in (p for p in parities if p.arch == arch):
            code = make_code(parity.code)
            history = []
            path = checkpoints / f"{parity.name}.pt"
            identity = {"task": "parity", "arch": arch, "code": type(code).__name__, "k": parity.k, "seed": plan.seed}
            reused = _adopt(adopt, path, identity)
            model = train_parity_model(deployed, code, arch, data, plan.epochs_of_parity(parity.k), plan.seed,
                                       checkpoint_path=path, history=history)
            diff = export_onnx(model, out / f"{parity.name}.onnx", check_inputs=parity_inputs(code, data.test.images))
            val = evaluate_degraded(deployed, model, code, data.val.images, data.val.labels)
            seconds, reused = _provenance(manifest.get(parity.name), history, reused)
            manifest[parity.name] = ModelRecord(parity.name, "parity", arch, _epochs(path), f"{parity.name}.onnx", diff,
                                                val, seconds, parity.code.to_dict(), reused)
            write_manifest(out, manifest)
    return manifest


def parity_inputs(code: Code, images: np.ndarray) -> np.ndarray:
    """Parity queries of up to CHECK_SIZE coding groups of ``images``, to compare ONNX with torch on."""
    count = min(CHECK_SIZE, len(images) // code.k) * code.k
    return code.encode(images[:count].reshape(-1, code.k, *images.shape[1:]))[:, 0]


def read_manifest(out: Path) -> dict[str, ModelRecord]:
    path = Path(out) / "models.json"
    if not path.exists():
        return {}
    return {name: ModelRecord(**record) for name, record in json.loads(path.read_text()).items()}


def write_manifest(out: Path, manifest: dict[str, ModelRecord]) -> None:
    records = {name: dataclasses.asdict(record) for name, record in manifest.items()}
    (Path(out) / "models.json").write_text(json.dumps(records, indent=2) + "\n")


def _adopt(source_dir: Path | None, target: Path, identity: dict) -> str | None:
    """Copy ``source_dir/<target name>`` when it is the same training; training.py still checks the
    deployed model's fingerprint before resuming a parity checkpoint."""
    source = Path(source_dir) / target.name if source_dir is not None else None
    if target.exists() or source is None or not source.exists():
        return None
    found = torch.load(source, weights_only=True)["identity"]
    if any(found.get(key) != value for key, value in identity.items()):
        return None
    shutil.copyfile(source, target)
    return str(source)


def _epochs(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, weights_only=True)["epoch"])


def _provenance(previous: ModelRecord | None, history: list[dict], adopted: str | None) -> tuple[float, str | None]:
    """Training seconds summed over the runs that trained the model here, and where an adopted checkpoint
    came from (remembered by later runs, which find the checkpoint already in place)."""
    this_run = sum(record["seconds"] for record in history)
    started_here = bool(history) and history[0]["epoch"] == 1
    if previous is None or started_here or adopted:
        return round(this_run, 1), adopted
    return round(previous.train_seconds + this_run, 1), previous.reused_from


class FrozenOnnxModel(nn.Module):
    """A user's ONNX classifier as a frozen torch module, so parity training treats it like ours.

    Its only state is the file's digest, so a parity checkpoint is tied to that exact file.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        digest = hashlib.sha256(Path(path).read_bytes()).digest()
        self.register_buffer("digest", torch.tensor(list(digest), dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([self.output_name], {self.input_name: x.detach().numpy()})
        return torch.from_numpy(logits)


def load_deployed(path: Path) -> nn.Module:
    """A user's deployed model: an ONNX file, or a TorchScript module (``torch.jit.save``)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return FrozenOnnxModel(path)
    return torch.jit.load(str(path)).eval()



def user_dataset(images: np.ndarray, labels: np.ndarray | None, deployed: nn.Module, val_fraction: float = 0.1,
                 seed: int = 0, test_fraction: float = 0.0) -> Dataset:
    """Training, validation and, with ``test_fraction``, held-out test splits from the user's images (without
    one, validation stands in for the test split); without labels, the deployed model's own predictions
    stand in (degraded-mode accuracy is then recovery accuracy)."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    if labels is None:
        labels = predict_logits(deployed, images).argmax(axis=1)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    order = np.random.default_rng(seed).permutation(len(images))
    cut = max(1, int(len(images) * val_fraction))
    test_cut = int(len(images) * test_fraction)
    val, train = np.sort(order[:cut]), np.sort(order[cut + test_cut:])
    validation = Split(images[val], labels[val])
    test = np.sort(order[cut:cut + test_cut])
    held_out = Split(images[test], labels[test]) if test_cut else validation
    return Dataset(Split(images[train], labels[train]), validation, held_out)


def export_deployment(
    deployed: nn.Module, deployed_onnx: Path, data: Dataset, code: CodeSpec, out: Path, name: str,
    parity_arch: str = "lenet5", epochs: int = 30, seed: int = 0, deadline_ms: float = 10.0,
    accelerator: str | None = None,
) -> tuple[RepositorySpec, dict]:
    """The repository of a coded deployment of ``deployed`` (served from ``deployed_onnx``): for ParM,
    a parity model of ``parity_arch`` is trained against it (resumable, ``out/checkpoints``) and exported
    with the deployed model's tensor names. Returns the spec and what was measured on the validation split."""
    out = Path(out)
    input, output = onnx_tensors(deployed_onnx)
    built = make_code(code)
    facts: dict = {"val_accuracy": accuracy(predict_logits(deployed, data.val.images), data.val.labels)}
    parity_onnx = None
    if built.learned_parity:
        if (input.dims, output.dims) != ((1, 28, 28), (10,)):
            raise ValueError(f"the parity architectures take [1, 28, 28] and return [10]; {deployed_onnx} has "
                             f"{list(input.dims)} -> {list(output.dims)}")
        parity = train_parity_model(deployed, built, parity_arch, data, epochs, seed,
                                    checkpoint_path=out / "checkpoints" / f"{name}_parity.pt")
        parity_onnx = out / f"{name}_parity.onnx"
        facts["parity_onnx_max_abs_diff"] = export_onnx(parity, parity_onnx, input.name, output.name, input.dims,
                                                        check_inputs=parity_inputs(built, data.val.images))
        facts |= {f"val_{key}": value for key, value in
                  evaluate_degraded(deployed, parity, built, data.val.images, data.val.labels).items()}
    return deployment(name, code, deployed_onnx, parity_onnx, deadline_ms=deadline_ms, accelerator=accelerator), facts

