"""Repository specs for coded ensembles of an image classifier, and the shipped default:
LeNet-5 on Fashion-MNIST behind a ParM coded ensemble (addition encoder, k=2)."""

from __future__ import annotations

from pathlib import Path

from .codes import CodeSpec, make_code
from .repository import CodedEnsembleSpec, OnnxModelSpec, RepositorySpec, TensorSpec

IMAGE = TensorSpec("image", "FP32", (1, 28, 28))
LOGITS = TensorSpec("logits", "FP32", (10,))
DEPLOYED_ONNX = "lenet5.onnx"
PARITY_ONNX = "lenet5_parity_parm-addition_k2.onnx"
DEFAULT_DEADLINE_MS = 10.0


def onnx_model(name: str, onnx_file: Path, accelerator: str | None = None) -> OnnxModelSpec:
    return OnnxModelSpec(name, onnx_file, (IMAGE,), (LOGITS,), accelerator=accelerator)


def coded_ensemble(
    name: str, code: CodeSpec, deployed: Path, parity: Path | None = None,
    deadline_ms: float = DEFAULT_DEADLINE_MS, accelerator: str | None = None,
) -> tuple[OnnxModelSpec | CodedEnsembleSpec, ...]:
    """A coded ensemble with its own members, encoder and decoder.

    Data members ``<name>_member_<i>`` run the deployed model on the original queries; coded
    members ``<name>_coded_<j>`` run the parity model (ParM) or the deployed model (codes that
    need no training) on the coded queries.
    """
    built = make_code(code)
    if built.learned_parity != (parity is not None):
        raise ValueError(f"{code.kind} {'needs' if built.learned_parity else 'takes no'} parity model")
    data_members = [onnx_model(f"{name}_member_{i}", deployed, accelerator)
                    for i in range(built.k if built.systematic else 0)]
    coded_members = [onnx_model(f"{name}_coded_{j}", parity or deployed, accelerator) for j in range(built.num_coded)]
    members = (*data_members, *coded_members)
    ensemble = CodedEnsembleSpec(name, code, tuple(m.name for m in members), IMAGE, LOGITS, deadline_ms=deadline_ms)
    return (*members, ensemble, *ensemble.codec_models())


def default_repository_spec(onnx_dir: Path, accelerator: str | None = None) -> RepositorySpec:
    onnx_dir = Path(onnx_dir)
    return RepositorySpec((
        onnx_model("lenet5", onnx_dir / DEPLOYED_ONNX, accelerator),
        *coded_ensemble("lenet5_parm", CodeSpec("parm-addition", 2), onnx_dir / DEPLOYED_ONNX,
                        onnx_dir / PARITY_ONNX, accelerator=accelerator),
    ))


def onnx_files_of_default_repository(repository: Path, target: Path) -> Path:
    """The ONNX files a default repository was written from, for building other repositories."""
    target.mkdir(parents=True, exist_ok=True)
    (target / DEPLOYED_ONNX).write_bytes((repository / "lenet5" / "1" / "model.onnx").read_bytes())
    (target / PARITY_ONNX).write_bytes((repository / "lenet5_parm_coded_0" / "1" / "model.onnx").read_bytes())
    return target
