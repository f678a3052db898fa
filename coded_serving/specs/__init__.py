"""Typed specs of a coded model repository: what each model is, never how Triton spells it.

``coded_serving.deployment.config_writer`` turns them into config.pbtxt files; nothing here needs
protobuf, so the runtime and the client can read a constant without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from coded_serving.codes import CodeSpec, make_code

#: Triton's data types a spec may name (config.pbtxt spells them TYPE_<name>)
DTYPES = ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "BOOL")
RECONSTRUCTED = "reconstructed"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name!r}: unsupported dtype {self.dtype!r}; known: {sorted(DTYPES)}")


@dataclass(frozen=True)
class OnnxModelSpec:
    """A model served from an ONNX file: a deployed model, a member, a parity model.

    ``accelerator="tensorrt"`` asks the ONNX Runtime backend for its TensorRT execution
    provider (GPU only; the CPU backend of this project ignores it). ``parameters`` go to the
    backend as they are (e.g. the project's fault injection, coded_serving.runtime.faults).
    """

    name: str
    onnx_file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 64
    instances: int = 1
    accelerator: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    #: Triton's dynamic batcher; a coded ensemble's members go without: its scheduler batches their
    #: calls and sends a worker its next call only when the last one returned, so a batcher would
    #: only add a thread hop to every call
    dynamic_batching: bool = True

    def __post_init__(self) -> None:
        if self.accelerator not in (None, "tensorrt"):
            raise ValueError(f"model {self.name!r}: unknown accelerator {self.accelerator!r}")


@dataclass(frozen=True)
class CodedEnsembleSpec:
    """The coordinator: groups queries, fans out to ``members``, races originals against decodes.

    ``members`` are in worker order: with a systematic code, worker ``i < k`` gets query ``i``
    unchanged. ``deadline_ms`` is how long a member's answer is awaited before it counts as
    missing (0 = a pure race, as in ParM); ``timeout_ms`` bounds a request that cannot be
    decoded. With ``group_wait_us`` the ensemble gets a dynamic batcher that holds requests that long
    to fill coding groups within one execute; without it (groups form across executes anyway)
    requests reach the scheduler directly.
    ``codec="native"`` encodes and decodes inside the scheduler where the code allows it (ParM's
    sum and subtraction, Coded-InvNet's stacking) and calls the encoder/decoder models otherwise;
    ``codec="models"`` always calls the models. Members are local models; a ``RemoteModelSpec``
    proxy stands for a model on another Triton server.
    ``max_queue_size`` bounds the queries the ensemble holds: past it, new requests are
    rejected at once with an error instead of letting latency grow without bound.
    A member with ``suspend_after_misses`` consecutive errors or late answers is not called
    (its queries are decoded) except for a probe every ``probe_interval_ms``; 0 turns it off.
    ``member_output`` is what members return when it is not the answer itself (Coded-InvNet's
    features, turned into ``output`` by the decoder model); ``files`` are copied next to the
    decoder's config for the code to read (e.g. a head's weights).

    Coding groups form as queries stream in: a query joins the oldest open group none of whose originals
    still waits for a free worker (queries that wait together leave in one call, where two originals of
    a group may not go); a group closes on its k-th query, once all its queries are answered, or
    ``group_close_us`` after its first original left the queue; a partial group is padded with copies of
    its own queries, and a lone query's copy is held in reserve and sent when its original errors or
    passes the deadline, or at once when a worker idles and another stays free for the next query
    (``copy_when_idle``). With ``deadline_min_ms`` the deadline adapts: ``deadline_percentile`` of the
    members' last ``deadline_window`` call latencies times ``deadline_margin``, within [deadline_min_ms,
    deadline_ms]; without it the deadline is ``deadline_ms``. ``topology="every_worker"``: each of the
    k+1 workers hosts the deployed model (``members[w]``) and the parity model (``parity_members[w]``)
    and roles rotate per group, so originals spread over every worker. A worker runs one of its models
    at a time because the scheduler sends it its next call only when the last one returned (no Triton
    rate limiter: it hands a resource only to the instance at the head of its queue, so one worker
    holding its resource, as a dead member does for each call, would stall every model of the server);
    ``"dedicated"``: the data members run the originals (whichever is free first) and coded member j the
    coded query j. ``pin_roles`` binds data role i to member i, so which queries a lost member costs is
    known in advance (the accuracy benchmark).
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
    instances: int = 1
    codec: str = "native"
    member_output: TensorSpec | None = None
    files: tuple[Path, ...] = ()
    max_queue_size: int = 256
    suspend_after_misses: int = 3
    probe_interval_ms: float = 1000.0
    group_close_us: int = 2000
    copy_when_idle: bool = False
    deadline_min_ms: float | None = None
    deadline_percentile: float = 95.0
    deadline_margin: float = 1.5
    deadline_window: int = 200
    topology: str = "dedicated"
    parity_members: tuple[str, ...] = ()
    pin_roles: bool = False

    def __post_init__(self) -> None:
        code = make_code(self.code)
        if self.topology not in ("dedicated", "every_worker"):
            raise ValueError(f"ensemble {self.name!r}: topology must be 'dedicated' or 'every_worker', got {self.topology!r}")
        if self.pin_roles and self.topology != "dedicated":
            raise ValueError(f"ensemble {self.name!r}: pin_roles applies to the dedicated topology only")
        if self.topology == "every_worker" and not (
                code.systematic and code.num_coded == 1 and len(self.parity_members) == len(self.members)):
            raise ValueError(f"ensemble {self.name!r}: every_worker needs a systematic code with one coded worker "
                             "and one parity member per member")
        if len(self.members) != code.num_workers:
            raise ValueError(
                f"ensemble {self.name!r}: code {self.code.kind} k={self.code.k} needs {code.num_workers} members, "
                f"got {len(self.members)}"
            )
        if self.codec not in ("native", "models"):
            raise ValueError(f"ensemble {self.name!r}: codec must be 'native' or 'models', got {self.codec!r}")

    @property
    def worker_output(self) -> TensorSpec:
        return self.member_output or self.output

    @property
    def encoder_model(self) -> str:
        return codec_model_names(self.name)[0]

    @property
    def decoder_model(self) -> str:
        return codec_model_names(self.name)[1]

    def codec_models(self) -> tuple["CodecModelSpec", "CodecModelSpec"]:
        """The standalone encoder and decoder of this ensemble's code."""
        return (
            CodecModelSpec(self.encoder_model, "encoder", self.code, self.input, self.worker_output),
            CodecModelSpec(self.decoder_model, "decoder", self.code, self.input, self.worker_output,
                           answer=self.output, files=self.files),
        )


def codec_model_names(ensemble: str) -> tuple[str, str]:
    """The names of a coded ensemble's encoder and decoder models."""
    return f"{ensemble}_encoder", f"{ensemble}_decoder"


@dataclass(frozen=True)
class CodecModelSpec:
    """A standalone encoder or decoder: one item of its batch is one coding group.

    encoder: ``queries`` [k, *query_dims] -> ``coded_queries`` [num_coded, *coded_query_dims]
    decoder: ``results`` [num_workers, *output_dims], ``available`` BOOL [num_workers]
             -> ``estimates`` [k, *answer_dims] (the code's postprocess applied, e.g. a head)
    """

    name: str
    role: str
    code: CodeSpec
    query: TensorSpec
    member_output: TensorSpec
    answer: TensorSpec | None = None
    files: tuple[Path, ...] = ()
    max_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.role not in ("encoder", "decoder"):
            raise ValueError(f"codec model {self.name!r}: role must be 'encoder' or 'decoder', got {self.role!r}")

    def tensors(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        code = make_code(self.code)
        if self.role == "encoder":
            coded_dims = code.coded_query_shape(self.query.dims)
            return ((TensorSpec("queries", self.query.dtype, (code.k, *self.query.dims)),),
                    (TensorSpec("coded_queries", self.query.dtype, (code.num_coded, *coded_dims)),))
        answer = self.answer or self.member_output
        return ((TensorSpec("results", self.member_output.dtype, (code.num_workers, *self.member_output.dims)),
                 TensorSpec("available", "BOOL", (code.num_workers,))),
                (TensorSpec("estimates", answer.dtype, (code.k, *answer.dims)),))


@dataclass(frozen=True)
class ForwardModelSpec:
    """A model that forwards each request to ``target`` over BLS, doing nothing else: the
    floor cost of any coordinator written as a Triton Python model (overhead benchmark)."""

    name: str
    target: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 64


@dataclass(frozen=True)
class RemoteModelSpec:
    """A local stand-in for ``model`` on another Triton server, reached over gRPC at ``url``
    (host:port): a coded ensemble's member may live elsewhere while the scheduler calls only
    local models. An unreachable server or a remote error is that member's error."""

    name: str
    url: str
    model: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    timeout_ms: float = 5000.0
    max_batch_size: int = 64

    def __post_init__(self) -> None:
        host, _, port = self.url.rpartition(":")
        if not host or not port.isdigit() or not self.model or "/" in self.model:
            raise ValueError(f"remote model {self.name!r}: url must be host:port and model a name, "
                             f"got {self.url!r} and {self.model!r}")


ModelSpec = Union[OnnxModelSpec, CodedEnsembleSpec, CodecModelSpec, ForwardModelSpec, RemoteModelSpec]


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
                missing = sorted(set(model.members) - set(names))
                if missing:
                    raise ValueError(f"ensemble {model.name!r} names members that are not in the repository: {missing}")
            if isinstance(model, ForwardModelSpec) and model.target not in names:
                raise ValueError(f"model {model.name!r} forwards to {model.target!r}, which is not in the repository")
