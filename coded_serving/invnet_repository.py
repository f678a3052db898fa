"""Repository specs for a Coded-InvNet coded ensemble (CODES.md section 3).

Data members run f and return features; the backup member runs f . g on the whole group; the
ensemble answers logits, applying the head it holds (``head.npz`` beside its config).
"""

from __future__ import annotations

from pathlib import Path

from .codes import CodeSpec
from .default_repository import IMAGE, LOGITS
from .invnet_training import FEATURES_ONNX, HEAD_FILE, backup_onnx
from .repository import CodedEnsembleSpec, OnnxModelSpec, RepositorySpec, TensorSpec

FEATURES_NAME = "features"


def invnet_ensemble(
    name: str, k: int, onnx_dir: Path, feature_dim: int, deadline_ms: float, accelerator: str | None = None,
) -> tuple[OnnxModelSpec | CodedEnsembleSpec, ...]:
    """``<name>_member_<i>`` (i < k) serve f, ``<name>_coded_0`` serves f . g for this k; files from ``onnx_dir``."""
    onnx_dir = Path(onnx_dir)
    features = TensorSpec(FEATURES_NAME, "FP32", (feature_dim,))
    group = TensorSpec(IMAGE.name, IMAGE.dtype, (k, *IMAGE.dims))
    members = [OnnxModelSpec(f"{name}_member_{i}", onnx_dir / FEATURES_ONNX, (IMAGE,), (features,),
                             accelerator=accelerator) for i in range(k)]
    members.append(OnnxModelSpec(f"{name}_coded_0", onnx_dir / backup_onnx(k), (group,), (features,),
                                 accelerator=accelerator))
    ensemble = CodedEnsembleSpec(
        name, CodeSpec("coded-invnet", k, {"head_file": HEAD_FILE}), tuple(m.name for m in members), IMAGE, LOGITS,
        deadline_ms=deadline_ms, member_output=features, files=(onnx_dir / HEAD_FILE,),
    )
    return (*members, ensemble, *ensemble.codec_models())


def invnet_repository_spec(name: str, k: int, onnx_dir: Path, feature_dim: int, deadline_ms: float) -> RepositorySpec:
    return RepositorySpec(invnet_ensemble(name, k, onnx_dir, feature_dim, deadline_ms))
