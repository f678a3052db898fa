"""Any ONNX model to a coded Triton repository in one call: ``build_repository`` (``coded-serving build``).

The deployed model is any ONNX file with one input and a batch axis; the builder reads its tensor names,
dtypes and shapes. Berrut and NeRCC need no training and write the repository in seconds. ParM trains
a parity model of the deployed model's own architecture against the frozen deployed model. With images,
degraded-mode accuracy is measured offline (onnxruntime and the code's own decoder) on images no
training saw. Coded-InvNet needs an invertible deployed model (an i-ResNet), not any model, so it keeps
its own training command: export/train_invnet.py.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from coded_serving.codes import Code, CodeSpec, make_code
from coded_serving.codes.stragglers import straggler_patterns
from coded_serving.deployment.builder import DEFAULT_DEADLINE_MS, deployment, onnx_tensors
from coded_serving.deployment.config_writer import write_repository
from coded_serving.specs import CodedEnsembleSpec, TensorSpec
from coded_serving.training.onnx_export import export_onnx
from coded_serving.training.parm import train_parity_model
from coded_serving.training.pipeline import load_deployed, parity_inputs, user_dataset
from coded_serving.training.tuning import TuningGrid, onnx_predict, score, worker_results

PARM_CODES = ("parm-addition", "parm-concatenation")
TRAINING_FREE_CODES = ("berrut", "nercc")
CODES = PARM_CODES + TRAINING_FREE_CODES
#: What validation chose for one straggler (reports/accuracy.md, section Tuning; LeNet-5 and the MLP, K = 2
#: to 12): ApproxIFER's cos(n pi / N) points in most cases for both codes, and NeRCC next to interpolation
#: (lambda_enc 0, lambda_dec at most 1e-6; accuracy falls as lambda_dec grows).
TRAINING_FREE_DEFAULTS = {
    "berrut": {"worker_points": "approxifer"},
    "nercc": {"worker_points": "approxifer", "lambda_enc": 0.0, "lambda_dec": 1e-7},
}
DEFAULT_EPOCHS = 10
#: shares of the given images: parity validation (epoch selection) and the held-out measurement
VAL_FRACTION = TEST_FRACTION = 0.1
MEASURE_BATCH = 64  # images per onnxruntime call: bounded memory for large inputs


@dataclass(frozen=True)
class BuildResult:
    repository: Path
    models: tuple[str, ...]
    ensemble: str
    code: CodeSpec
    #: degraded-mode accuracy of reconstructed answers on held-out images, None without images
    degraded_accuracy: float | None = None
    #: "labels" (degraded-mode accuracy), or "the deployed model's predictions" (recovery accuracy)
    measured_against: str | None = None
    available_accuracy: float | None = None
    held_out_images: int = 0
    #: workers missing at a time in the measurement (every such set, or a seeded sample of them)
    stragglers: int = 1
    parity_onnx_max_abs_diff: float | None = None
    seconds: float = 0.0

    @property
    def serve_command(self) -> str:
        return f"coded-serving serve --model-repository {self.repository}"

    def summary(self) -> str:
        """What the CLI prints: what was written, the measured figure, the serve command."""
        lines = [f"wrote {len(self.models)} models to {self.repository} in {self.seconds:.1f} s; "
                 f"query {self.ensemble} ({self.code.kind}, k={self.code.k}) as you queried {self.models[0]}"]
        if self.degraded_accuracy is None:
            lines.append("degraded-mode accuracy not measured (pass --images to measure it)")
        else:
            figure = "degraded-mode accuracy" if self.measured_against == "labels" else "recovery accuracy"
            lines.append(f"{figure} {self.degraded_accuracy:.3f} against {self.measured_against} on "
                         f"{self.held_out_images} held-out images, {self.stragglers} worker(s) of a group missing"
                         + ("" if self.available_accuracy is None else f" (deployed model: {self.available_accuracy:.3f})"))
        lines.append(f"serve: {self.serve_command}")
        return "\n".join(lines)


def build_repository(
    model_onnx: Path, code: str, k: int, repository: Path, *, stragglers: int = 1, images: Path | None = None,
    labels: Path | None = None, epochs: int = DEFAULT_EPOCHS, name: str | None = None,
    deadline_ms: float = DEFAULT_DEADLINE_MS, accelerator: str | None = None, progress: bool = True, seed: int = 0,
) -> BuildResult:
    """Write ``repository`` serving ``model_onnx`` as ``name`` and its coded ensemble ``<name>_<family>``.

    ``code``: parm-addition or parm-concatenation (k data workers and one parity worker; tolerates one
    missing result per group; needs ``images``), berrut or nercc (k + ``stragglers`` workers running the
    unchanged model; tolerates any number missing). ``images``: a .npy float array shaped like the
    model's input batch; ``labels``: a .npy of class indices (without them the figure is recovery accuracy,
    agreement with the deployed model). ``deadline_ms``: how long the ensemble waits for a member before
    treating it as missing. Coded-InvNet: export/train_invnet.py (it needs an invertible model).
    """
    start = time.perf_counter()
    model_onnx, repository = Path(model_onnx), Path(repository)
    spec = code_spec(code, k, stragglers)
    query, _ = onnx_tensors(model_onnx)
    name = name or default_name(model_onnx)
    image_array = load_images(images, query)
    label_array = load_labels(labels, image_array)
    built = make_code(spec)
    with tempfile.TemporaryDirectory() as scratch:
        facts: dict = {}
        parity_onnx = None
        if built.learned_parity:
            if image_array is None:
                raise ValueError(f"{code} trains a parity model: give training images (--images)")
            parity_onnx = Path(scratch) / "parity.onnx"
            image_array, label_array, diff = _train_parity(model_onnx, built, query, image_array, label_array,
                                                           parity_onnx, epochs, seed, progress)
            facts["parity_onnx_max_abs_diff"] = diff
        if image_array is not None:
            facts |= _measure(built, stragglers, model_onnx, parity_onnx or model_onnx, image_array, label_array)
        written = deployment(name, spec, model_onnx, parity_onnx, deadline_ms=deadline_ms, accelerator=accelerator)
        write_repository(written, repository)
    (ensemble,) = (m.name for m in written.models if isinstance(m, CodedEnsembleSpec))
    return BuildResult(repository, tuple(m.name for m in written.models), ensemble, spec, **facts,
                       stragglers=stragglers, seconds=round(time.perf_counter() - start, 1))


def code_spec(code: str, k: int, stragglers: int = 1) -> CodeSpec:
    if code not in CODES:
        hint = "; coded-invnet needs an invertible model: export/train_invnet.py" if code == "coded-invnet" else ""
        raise ValueError(f"unknown code {code!r}; choose one of {', '.join(CODES)}{hint}")
    if k < 2:
        raise ValueError(f"k must be at least 2 (queries coded together), got {k}")
    if code in PARM_CODES:
        if stragglers != 1:
            raise ValueError(f"{code} tolerates one missing result per group, not {stragglers}; use berrut or nercc")
        return CodeSpec(code, k)
    if stragglers < 1:
        raise ValueError(f"stragglers must be at least 1, got {stragglers}")
    return CodeSpec(code, k, {"num_workers": k + stragglers, **TRAINING_FREE_DEFAULTS[code]})


def default_name(model_onnx: Path) -> str:
    """The file's stem, or the model's name for a file in a Triton repository (``<name>/<version>/model.onnx``)."""
    if model_onnx.stem == "model" and model_onnx.parent.name.isdigit():
        return model_onnx.parent.parent.name
    return model_onnx.stem


def load_images(path: Path | None, query: TensorSpec) -> np.ndarray | None:
    if path is None:
        return None
    images = np.load(path)
    expected = ["N", *(d if d > 0 else "any" for d in query.dims)]
    fits = images.ndim == len(query.dims) + 1 and all(d <= 0 or d == n for d, n in zip(query.dims, images.shape[1:]))
    if not fits:
        raise ValueError(f"{path}: images shaped {list(images.shape)}, but the model's input {query.name!r} is "
                         f"{expected} (a batch of queries)")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{path}: images must be floating point (the codes add and blend them), got {images.dtype}")
    return np.ascontiguousarray(images, dtype=np.float32)


def load_labels(path: Path | None, images: np.ndarray | None) -> np.ndarray | None:
    if path is None:
        return None
    if images is None:
        raise ValueError("labels need their images (--images)")
    labels = np.load(path)
    if labels.shape != (len(images),):
        raise ValueError(f"{path}: labels shaped {list(labels.shape)}, expected [{len(images)}] (one per image)")
    return labels.astype(np.int64)


def _train_parity(
    model_onnx: Path, code: Code, query: TensorSpec, images: np.ndarray, labels: np.ndarray | None,
    parity_onnx: Path, epochs: int, seed: int, progress: bool,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Train and export the parity model; returns the held-out images, their labels if any were given,
    and the ONNX file's largest difference from torch."""
    if query.dtype != "FP32":
        raise ValueError(f"{model_onnx}: ParM trains in FP32, the model's input is {query.dtype}; export it in FP32")
    deployed = load_deployed(model_onnx)
    data = user_dataset(images, labels, deployed, VAL_FRACTION, seed, TEST_FRACTION)
    if min(len(data.val), len(data.test)) < code.k:
        raise ValueError(f"{len(images)} images leave fewer than k={code.k} for validation or measurement")
    parity = train_parity_model(deployed, code, own_architecture(model_onnx), data, epochs, seed, progress=progress)
    diff = export_onnx(parity, parity_onnx, query.name, onnx_tensors(model_onnx)[1].name, images.shape[1:],
                       check_inputs=parity_inputs(code, data.val.images))
    return data.test.images, (data.test.labels if labels is not None else None), diff


def own_architecture(model_onnx: Path) -> nn.Module:
    """The deployed graph as a trainable torch module, starting from the deployed weights.

    ParM's parity model has the deployed model's architecture. Starting from the deployed weights rather
    than random ones (ParM's recipe) reached clearly higher degraded-mode accuracy in the same epochs on
    LeNet-5: the deployed features already separate the classes, and the parity model only has to learn
    to read them off a sum of inputs.
    """
    return _onnx2torch().convert(onnx.load(str(model_onnx)))


def _onnx2torch() -> types.ModuleType:
    """onnx2torch imports torchvision for its detection converters (NonMaxSuppression, RoiAlign) only.
    Beside this project's CPU torch, PyPI's torchvision (a CUDA build) fails to import; a stand-in then
    lets classifiers convert, and those two converters fail if a graph uses them."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[module]
        stand_in = types.ModuleType("torchvision")
        stand_in.ops = types.ModuleType("torchvision.ops")
        stand_in.ops.roi_align = None
        sys.modules |= {"torchvision": stand_in, "torchvision.ops": stand_in.ops}
    import onnx2torch

    return onnx2torch


def _measure(code: Code, stragglers: int, deployed_onnx: Path, coded_onnx: Path, images: np.ndarray,
             labels: np.ndarray | None) -> dict:
    """Degraded-mode accuracy as the accuracy benchmark pools it (coded_serving.codes.stragglers): each
    worker missing in turn (``stragglers`` at a time), every original it leaves missing counted once."""
    threads = os.cpu_count() or 1
    groups = len(images) // code.k
    if groups == 0:
        raise ValueError(f"{len(images)} images cannot fill one coding group of k={code.k}")
    used = images[: groups * code.k]
    grouped = used.reshape(groups, code.k, *images.shape[1:])
    deployed_logits = onnx_predict(deployed_onnx, threads, MEASURE_BATCH)(used).reshape(groups, code.k, -1)
    truth = labels[: groups * code.k].reshape(groups, code.k) if labels is not None else deployed_logits.argmax(-1)
    results = worker_results(code, onnx_predict(coded_onnx, threads, MEASURE_BATCH), grouped, deployed_logits)
    grid = TuningGrid()
    found = score(code, results, truth, deployed_logits,
                  straggler_patterns(code.num_workers, stragglers, grid.subsets, grid.seed))
    with_labels = labels is not None
    return {
        "degraded_accuracy": found.degraded_accuracy if with_labels else found.recovery_accuracy,
        "measured_against": "labels" if with_labels else "the deployed model's predictions",
        "available_accuracy": float(np.mean(deployed_logits.argmax(-1) == truth)) if with_labels else None,
        "held_out_images": len(used),
    }
