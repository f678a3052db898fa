"""The shipped default: LeNet-5 on Fashion-MNIST behind a ParM coded ensemble (addition, k=2)."""

from __future__ import annotations

from pathlib import Path

from .codes import CodeSpec
from .repository import CodedEnsembleSpec, OnnxModelSpec, RepositorySpec, TensorSpec

IMAGE = TensorSpec("image", "FP32", (1, 28, 28))
LOGITS = TensorSpec("logits", "FP32", (10,))
DEPLOYED_ONNX = "lenet5.onnx"
PARITY_ONNX = "lenet5_parity_parm-addition_k2.onnx"


def onnx_model(name: str, onnx_file: Path, accelerator: str | None = None) -> OnnxModelSpec:
    return OnnxModelSpec(name, onnx_file, (IMAGE,), (LOGITS,), accelerator=accelerator)


def parm_ensemble(
    name: str, deployed: Path, parity: Path, code: CodeSpec, deadline_ms: float = 10.0,
    accelerator: str | None = None,
) -> tuple[OnnxModelSpec | CodedEnsembleSpec, ...]:
    """A ParM coded ensemble with its k data members, its parity member, encoder and decoder."""
    data_members = [onnx_model(f"{name}_member_{i}", deployed, accelerator) for i in range(code.k)]
    parity_member = onnx_model(f"{name}_parity", parity, accelerator)
    ensemble = CodedEnsembleSpec(
        name, code, tuple(m.name for m in data_members) + (parity_member.name,), IMAGE, LOGITS,
        deadline_ms=deadline_ms,
    )
    return (*data_members, parity_member, ensemble, *ensemble.codec_models())


def default_repository_spec(onnx_dir: Path, accelerator: str | None = None) -> RepositorySpec:
    onnx_dir = Path(onnx_dir)
    return RepositorySpec((
        onnx_model("lenet5", onnx_dir / DEPLOYED_ONNX, accelerator),
        *parm_ensemble("lenet5_parm", onnx_dir / DEPLOYED_ONNX, onnx_dir / PARITY_ONNX,
                       CodeSpec("parm-addition", 2), accelerator=accelerator),
    ))
