"""Typed specs of a coded model repository, and the writer that turns them into one.

Every config.pbtxt is built as Triton's own ``ModelConfig`` protobuf and printed with
``text_format``, so a spec that Triton would not parse cannot be written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Union

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .codes import CodeSpec, make_code
from .remote import RemoteMember, is_remote

DTYPES = {"FP32": mc.TYPE_FP32, "BOOL": mc.TYPE_BOOL, "INT64": mc.TYPE_INT64}
RECONSTRUCTED = "reconstructed"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name!r}: unsupported dtype {self.dtype!r}; known: {sorted(DTYPES)}")

    def to_proto(self, message) -> None:
        message.name = self.name
        message.data_type = DTYPES[self.dtype]
        message.dims.extend(self.dims)


@dataclass(frozen=True)
class OnnxModelSpec:
    """A model served from an ONNX file: a deployed model, a member, a parity model.

    ``accelerator="tensorrt"`` asks the ONNX Runtime backend for its TensorRT execution
    provider (GPU only; the CPU backend of this project ignores it). ``parameters`` go to the
    backend as they are (e.g. the project's fault injection, coded_serving.faults).
    """

    name: str
    onnx_file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 64
    instances: int = 1
    accelerator: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)

    def config(self) -> mc.ModelConfig:
        # No instance kind: Triton picks the GPU where there is one, else the CPU.
        config = _base_config(self.name, "onnxruntime", self.max_batch_size, self.inputs, self.outputs, self.instances,
                              kind=None)
        config.default_model_filename = "model.onnx"
        config.dynamic_batching.SetInParent()
        _set_parameters(config, self.parameters)
        if self.accelerator == "tensorrt":
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
            accelerator.name = "tensorrt"
            accelerator.parameters["precision_mode"] = "FP16"
        elif self.accelerator is not None:
            raise ValueError(f"model {self.name!r}: unknown accelerator {self.accelerator!r}")
        return config

    def write_files(self, model_dir: Path) -> None:
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.onnx_file, model_dir / "1" / "model.onnx")


@dataclass(frozen=True)
class CodedEnsembleSpec:
    """The coordinator: groups queries, fans out to ``members``, races originals against decodes.

    ``members`` are in worker order: with a systematic code, worker ``i < k`` gets query ``i``
    unchanged. ``deadline_ms`` is how long a member's answer is awaited before it counts as
    missing (0 = a pure race, as in ParM); ``timeout_ms`` bounds a request that cannot be
    decoded. ``group_wait_us`` is the dynamic batcher's delay for filling coding groups.
    ``codec="models"`` calls the standalone encoder/decoder models instead of the library.
    A member named ``grpc://host:port/model`` is a model on another Triton server.
    ``max_queue_size`` bounds the requests waiting for the coordinator: past it, Triton
    rejects new ones at once with an error instead of letting latency grow without bound.
    A member with ``suspend_after_misses`` consecutive errors or late answers is not called
    (its queries are decoded) except for a probe every ``probe_interval_ms``; 0 turns it off.
    ``member_output`` is what members return when it is not the answer itself (Coded-InvNet's
    features, turned into ``output`` by the code's ``postprocess``); ``files`` are copied next to
    the ensemble's config for the code to read (e.g. a head's weights).
    """

    name: str
    code: CodeSpec
    members: tuple[str, ...]
    input: TensorSpec
    output: TensorSpec
    deadline_ms: float = 20.0
    timeout_ms: float = 5000.0
    max_batch_size: int = 64
    group_wait_us: int = 0
    instances: int = 2
    codec: str = "inprocess"
    member_output: TensorSpec | None = None
    files: tuple[Path, ...] = ()
    max_queue_size: int = 256
    suspend_after_misses: int = 3
    probe_interval_ms: float = 1000.0

    def __post_init__(self) -> None:
        for member in filter(is_remote, self.members):
            RemoteMember.parse(member)
        code = make_code(self.code)
        if len(self.members) != code.num_workers:
            raise ValueError(
                f"ensemble {self.name!r}: code {self.code.kind} k={self.code.k} needs {code.num_workers} members, "
                f"got {len(self.members)}"
            )
        if self.codec not in ("inprocess", "models"):
            raise ValueError(f"ensemble {self.name!r}: codec must be 'inprocess' or 'models', got {self.codec!r}")

    @property
    def worker_output(self) -> TensorSpec:
        return self.member_output or self.output

    @property
    def encoder_model(self) -> str:
        return f"{self.name}_encoder"

    @property
    def decoder_model(self) -> str:
        return f"{self.name}_decoder"

    def config(self) -> mc.ModelConfig:
        outputs = (self.output, TensorSpec(RECONSTRUCTED, "BOOL", (1,)))
        config = _base_config(self.name, "coded_ensemble", self.max_batch_size, (self.input,), outputs, self.instances)
        config.dynamic_batching.max_queue_delay_microseconds = self.group_wait_us
        config.dynamic_batching.default_queue_policy.max_queue_size = self.max_queue_size
        _set_parameters(config, {
            "code": json.dumps(self.code.to_dict()),
            "members": ",".join(self.members),
            "deadline_ms": self.deadline_ms,
            "timeout_ms": self.timeout_ms,
            "codec": self.codec,
            "encoder_model": self.encoder_model,
            "decoder_model": self.decoder_model,
            "member_output": json.dumps(asdict(self.worker_output)),
            "suspend_after_misses": self.suspend_after_misses,
            "probe_interval_ms": self.probe_interval_ms,
        })
        return config

    def codec_models(self) -> tuple["CodecModelSpec", "CodecModelSpec"]:
        """The standalone encoder and decoder of this ensemble's code."""
        return (
            CodecModelSpec(self.encoder_model, "encoder", self.code, self.input.dims, self.worker_output.dims),
            CodecModelSpec(self.decoder_model, "decoder", self.code, self.input.dims, self.worker_output.dims),
        )


@dataclass(frozen=True)
class CodecModelSpec:
    """A standalone encoder or decoder: one item of its batch is one coding group.

    encoder: ``queries`` [k, *query_dims] -> ``coded_queries`` [num_coded, *coded_query_dims]
    decoder: ``results`` [num_workers, *output_dims], ``available`` BOOL [num_workers]
             -> ``estimates`` [k, *output_dims]
    """

    name: str
    role: str
    code: CodeSpec
    query_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    max_batch_size: int = 64

    def tensors(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        code = make_code(self.code)
        if self.role == "encoder":
            return (
                (TensorSpec("queries", "FP32", (code.k, *self.query_dims)),),
                (TensorSpec("coded_queries", "FP32", (code.num_coded, *code.coded_query_shape(self.query_dims))),),
            )
        if self.role == "decoder":
            return (
                (TensorSpec("results", "FP32", (code.num_workers, *self.output_dims)),
                 TensorSpec("available", "BOOL", (code.num_workers,))),
                (TensorSpec("estimates", "FP32", (code.k, *self.output_dims)),),
            )
        raise ValueError(f"codec model {self.name!r}: role must be 'encoder' or 'decoder', got {self.role!r}")

    def config(self) -> mc.ModelConfig:
        inputs, outputs = self.tensors()
        config = _base_config(self.name, f"coded_{self.role}", self.max_batch_size, inputs, outputs, 1)
        config.dynamic_batching.SetInParent()
        _set_parameters(config, {"code": json.dumps(self.code.to_dict())})
        return config


@dataclass(frozen=True)
class ForwardModelSpec:
    """A model that forwards each request to ``target`` over BLS, doing nothing else: the
    floor cost of any coordinator written as a Triton Python model (overhead benchmark)."""

    name: str
    target: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 64

    def config(self) -> mc.ModelConfig:
        config = _base_config(self.name, "bls_forward", self.max_batch_size, self.inputs, self.outputs, 1)
        config.dynamic_batching.SetInParent()
        _set_parameters(config, {"target": self.target})
        return config


ModelSpec = Union[OnnxModelSpec, CodedEnsembleSpec, CodecModelSpec, ForwardModelSpec]


@dataclass(frozen=True)
class RepositorySpec:
    models: tuple[ModelSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        names = [model.name for model in self.models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names used twice: {duplicates}")
        for model in self.models:
            if isinstance(model, CodedEnsembleSpec):
                missing = sorted(m for m in set(model.members) - set(names) if not is_remote(m))
                if missing:
                    raise ValueError(f"ensemble {model.name!r} names members that are not in the repository: {missing}")
            if isinstance(model, ForwardModelSpec) and model.target not in names:
                raise ValueError(f"model {model.name!r} forwards to {model.target!r}, which is not in the repository")


def write_repository(spec: RepositorySpec, path: Path) -> Path:
    """Write every model of ``spec`` under ``path``, replacing models of the same name."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for model in spec.models:
        model_dir = path / model.name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        model_dir.mkdir()
        if isinstance(model, OnnxModelSpec):
            model.write_files(model_dir)
        else:  # a Python-based model still needs a version folder; git keeps it through the marker
            (model_dir / "1").mkdir()
            (model_dir / "1" / ".gitkeep").touch()
        for file in getattr(model, "files", ()):
            shutil.copyfile(file, model_dir / "1" / Path(file).name)
        (model_dir / "config.pbtxt").write_text(text_format.MessageToString(model.config()))
    return path


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt the way Triton does (unknown fields are errors)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def _base_config(name, backend, max_batch_size, inputs, outputs, instances,
                 kind=mc.ModelInstanceGroup.KIND_CPU) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    for tensor in inputs:
        tensor.to_proto(config.input.add())
    for tensor in outputs:
        tensor.to_proto(config.output.add())
    group = config.instance_group.add()
    group.count = instances
    if kind is not None:
        group.kind = kind
    return config


def _set_parameters(config: mc.ModelConfig, values: dict) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def ensemble_from_model_config(config: dict) -> CodedEnsembleSpec:
    """Rebuild the spec from the JSON model config Triton hands a backend's ``initialize``."""
    parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
    tensors = [_tensor_from_json(t) for t in config["input"]], [_tensor_from_json(t) for t in config["output"]]
    (query,), outputs = tensors
    batching = config.get("dynamic_batching", {})
    (output,) = [t for t in outputs if t.name != RECONSTRUCTED]
    return CodedEnsembleSpec(
        name=config["name"],
        code=CodeSpec.from_dict(json.loads(parameters["code"])),
        members=tuple(parameters["members"].split(",")),
        input=query,
        output=output,
        deadline_ms=float(parameters["deadline_ms"]),
        timeout_ms=float(parameters["timeout_ms"]),
        max_batch_size=int(config.get("max_batch_size", 0)),
        group_wait_us=int(batching.get("max_queue_delay_microseconds", 0)),
        max_queue_size=int(batching.get("default_queue_policy", {}).get("max_queue_size", 0)),
        instances=int(config["instance_group"][0]["count"]),
        codec=parameters["codec"],
        member_output=_member_output(json.loads(parameters["member_output"]), output),
        suspend_after_misses=int(parameters["suspend_after_misses"]),
        probe_interval_ms=float(parameters["probe_interval_ms"]),
    )


def _member_output(tensor: dict, output: TensorSpec) -> TensorSpec | None:
    member_output = TensorSpec(tensor["name"], tensor["dtype"], tuple(tensor["dims"]))
    return None if member_output == output else member_output


def _tensor_from_json(tensor: dict) -> TensorSpec:
    return TensorSpec(tensor["name"], tensor["data_type"].removeprefix("TYPE_"), tuple(int(d) for d in tensor["dims"]))
