"""Export a torch module to ONNX for Triton, and prove the file computes what the module does."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

TOLERANCE = 1e-4


def export_onnx(
    module: nn.Module,
    path: Path | str,
    input_name: str = "image",
    output_name: str = "logits",
    sample_shape: tuple[int, ...] = (1, 28, 28),
    check_inputs: np.ndarray | None = None,
) -> float:
    """Write ``module`` with a dynamic batch axis (Triton batches requests) and return the max abs
    difference between onnxruntime and torch on ``check_inputs`` (64 seeded uniform [0, 1] inputs by default).

    Raises if the difference exceeds ``TOLERANCE``: a served model must be the trained one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    # A batch of 2 keeps the exporter from specialising the batch dimension to 1.
    example = torch.zeros((2, *sample_shape), dtype=torch.float32)
    # The TorchScript exporter is chosen on purpose (a plain graph, no onnxscript needed); its
    # deprecation notices say nothing about the file it writes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)

    if check_inputs is None:
        check_inputs = np.random.default_rng(0).random((64, *sample_shape), dtype=np.float32)
    check_inputs = np.ascontiguousarray(check_inputs, dtype=np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_outputs,) = session.run([output_name], {input_name: check_inputs})
    with torch.no_grad():
        torch_outputs = module(torch.from_numpy(check_inputs)).numpy()
    max_abs_diff = float(np.max(np.abs(onnx_outputs - torch_outputs)))
    if not max_abs_diff <= TOLERANCE:
        raise RuntimeError(f"{path}: onnxruntime differs from torch by {max_abs_diff:.3g} (> {TOLERANCE})")
    return max_abs_diff
