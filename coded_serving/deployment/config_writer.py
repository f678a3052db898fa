"""The one writer of config.pbtxt: typed specs (coded_serving.specs) to a Triton model repository.

Every config is built as Triton's own ``ModelConfig`` protobuf and printed with ``text_format``,
so a spec that Triton would not parse cannot be written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from coded_serving.codes import make_code
from coded_serving.specs import RECONSTRUCTED, CodecModelSpec, CodedEnsembleSpec, ForwardModelSpec, ModelSpec, OnnxModelSpec, RemoteModelSpec, RepositorySpec, TensorSpec


def write_repository(spec: RepositorySpec, path: Path) -> Path:
    """Write every model of ``spec`` under ``path``, replacing models of the same name."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for model in spec.models:
        model_dir = path / model.name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / "1").mkdir(parents=True)
        if isinstance(model, OnnxModelSpec):
            shutil.copyfile(model.onnx_file, model_dir / "1" / "model.onnx")
        else:  # a model without files still needs a version folder; git keeps it through the marker
            (model_dir / "1" / ".gitkeep").touch()
        for file in getattr(model, "files", ()):
            shutil.copyfile(file, model_dir / "1" / Path(file).name)
        (model_dir / "config.pbtxt").write_text(text_format.MessageToString(model_config(model)))
    return path


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt the way Triton does (unknown fields are errors)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def model_config(model: ModelSpec) -> mc.ModelConfig:
    writers = {OnnxModelSpec: _onnx_config, CodedEnsembleSpec: _ensemble_config, CodecModelSpec: _codec_config,
               ForwardModelSpec: _forward_config, RemoteModelSpec: _remote_config}
    return writers[type(model)](model)


def _onnx_config(spec: OnnxModelSpec) -> mc.ModelConfig:
    # No instance kind: Triton picks the GPU where there is one, else the CPU.
    config = _base_config(spec.name, "onnxruntime", spec.max_batch_size, spec.inputs, spec.outputs, spec.instances,
                          kind=None)
    config.default_model_filename = "model.onnx"
    if spec.dynamic_batching:
        config.dynamic_batching.SetInParent()
    _set_parameters(config, spec.parameters)
    if spec.accelerator == "tensorrt":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"
        accelerator.parameters["precision_mode"] = "FP16"
    return config


def _ensemble_config(spec: CodedEnsembleSpec) -> mc.ModelConfig:
    """The scheduler backend's parameters: what it needs of the code is written out here, so the
    backend never parses a code's own description."""
    code = make_code(spec.code)
    native = spec.codec == "native"
    outputs = (spec.output, TensorSpec(RECONSTRUCTED, "BOOL", (1,)))
    config = _base_config(spec.name, "coded_ensemble", spec.max_batch_size, (spec.input,), outputs, spec.instances)
    if spec.group_wait_us:  # otherwise requests reach the scheduler one by one, a thread hop less
        config.dynamic_batching.max_queue_delay_microseconds = spec.group_wait_us
    _set_parameters(config, {
        "members": ",".join(spec.members),
        "k": code.k,
        "systematic": str(code.systematic).lower(),
        "min_available": code.min_available,
        "encoder": code.native_encoder if native and code.native_encoder else "model",
        "decoder": "subtract" if native and code.subtraction_weight and not code.postprocesses else "model",
        "parity_weight": code.subtraction_weight or 0.0,
        "postprocess": "decoder" if code.postprocesses else "none",
        "encoder_model": spec.encoder_model,
        "decoder_model": spec.decoder_model,
        "member_output": json.dumps(asdict(spec.worker_output)),
        "deadline_ms": spec.deadline_ms,
        "timeout_ms": spec.timeout_ms,
        "max_in_flight": spec.max_queue_size,
        "suspend_after_misses": spec.suspend_after_misses,
        "probe_interval_ms": spec.probe_interval_ms,
        "group_close_us": spec.group_close_us,
        "copy_when_idle": str(spec.copy_when_idle).lower(),
        "deadline_percentile": spec.deadline_percentile,
        "deadline_margin": spec.deadline_margin,
        "deadline_window": spec.deadline_window,
    })
    if spec.deadline_min_ms is not None:
        _set_parameters(config, {"deadline_min_ms": spec.deadline_min_ms})
    if spec.pin_roles:
        _set_parameters(config, {"pin_roles": "true"})
    if spec.topology == "every_worker":
        _set_parameters(config, {"worker_models": ",".join(f"{m}:{p}" for m, p in zip(spec.members, spec.parity_members))})
    return config


def _codec_config(spec: CodecModelSpec) -> mc.ModelConfig:
    inputs, outputs = spec.tensors()
    config = _base_config(spec.name, f"coded_{spec.role}", spec.max_batch_size, inputs, outputs, 1)
    config.dynamic_batching.SetInParent()
    _set_parameters(config, {"code": json.dumps(spec.code.to_dict())})
    return config


def _forward_config(spec: ForwardModelSpec) -> mc.ModelConfig:
    config = _base_config(spec.name, "bls_forward", spec.max_batch_size, spec.inputs, spec.outputs, 1)
    config.dynamic_batching.SetInParent()
    _set_parameters(config, {"target": spec.target})
    return config


def _remote_config(spec: RemoteModelSpec) -> mc.ModelConfig:
    config = _base_config(spec.name, "remote_model", spec.max_batch_size, spec.inputs, spec.outputs, 1)
    config.dynamic_batching.SetInParent()
    _set_parameters(config, {"url": spec.url, "model": spec.model, "timeout_ms": spec.timeout_ms})
    return config


def _base_config(name, backend, max_batch_size, inputs, outputs, instances,
                 kind=mc.ModelInstanceGroup.KIND_CPU) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    for tensor in inputs:
        _tensor(config.input.add(), tensor)
    for tensor in outputs:
        _tensor(config.output.add(), tensor)
    group = config.instance_group.add()
    group.count = instances
    if kind is not None:
        group.kind = kind
    return config


def _tensor(message, tensor: TensorSpec) -> None:
    message.name = tensor.name
    message.data_type = mc.DataType.Value(f"TYPE_{tensor.dtype}")
    message.dims.extend(tensor.dims)


def _set_parameters(config: mc.ModelConfig, values: dict) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)
