"""The one builder of coded ensembles, for any deployed model: tensor names, dtypes and shapes
are read from the ONNX files, so nothing here knows an image size or imports torch.

``deployment(name, code, deployed.onnx, [coded.onnx])`` gives the deployed model served directly as
``name`` and its coded ensemble ``<name>_<family>`` (``lenet5_parm``, ``resnet_berrut``...). The
shipped default, the multi-server cluster and Coded-InvNet are built from the same pieces.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import onnx

from coded_serving.codes import CodeSpec, make_code
from coded_serving.codes.invnet import MLPHead
from coded_serving.deployment.config_writer import write_repository
from coded_serving.specs import CodedEnsembleSpec, ModelSpec, OnnxModelSpec, RemoteModelSpec, RepositorySpec, TensorSpec

DEFAULT_DEADLINE_MS = 10.0
ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.INT8: "INT8", onnx.TensorProto.INT16: "INT16", onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64", onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.BOOL: "BOOL",
}
#: the shipped default: LeNet-5 on Fashion-MNIST and its ParM parity model (k=2), files in one folder
DEFAULT_DEPLOYED_ONNX = "lenet5.onnx"
DEFAULT_PARITY_ONNX = "lenet5_parity_parm-addition_k2.onnx"
#: the shipped training-free code: NeRCC at K = 8 with one straggler (9 workers running the deployed model),
#: the best one-straggler code at K = 8 in reports/accuracy.md (LeNet-5: NeRCC 0.785, Berrut 0.767); point
#: set and lambdas as validation chose them there (section Tuning, "What is served")
DEFAULT_NERCC = CodeSpec("nercc", 8, {"num_workers": 9, "worker_points": "approxifer", "lambda_enc": 3e-6,
                                      "lambda_dec": 1e-7})
#: Coded-InvNet's files as export/train_invnet.py writes them: the invertible classifier's features f,
#: the backup model f . g of each k, and the classifier's head, which the decoder model applies
INVNET_FEATURES_ONNX = "invnet_features.onnx"
INVNET_HEAD_FILE = "head.npz"
#: the shipped Coded-InvNet ensemble: k = 4 (5 workers), the invertible classifier as the deployed model
DEFAULT_INVNET = "iresnet_invnet"
DEFAULT_INVNET_K = 4
#: the codes model_repository/ serves, by ensemble suffix: lenet5_parm, lenet5_nercc, iresnet_invnet
SHIPPED_CODES = ("parm", "nercc", "invnet")


def invnet_backup_onnx(k: int) -> str:
    return f"invnet_backup_k{k}.onnx"


def onnx_tensors(path: Path) -> tuple[TensorSpec, TensorSpec]:
    """The one input and first output of an ONNX file, without the batch axis (which must be dynamic).
    Shapes come from ONNX's shape inference, so an exporter that left an output's size symbolic (a
    Flatten, a Reshape) still yields the fixed dims Triton needs."""
    model = onnx.load(str(path), load_external_data=False)
    graph = onnx.shape_inference.infer_shapes(model).graph
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    if len(inputs) != 1:
        raise ValueError(f"{path}: a coded ensemble serves models with one input, found {[i.name for i in inputs]}")

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        if tensor.elem_type not in ONNX_DTYPES:
            raise ValueError(f"{path}: tensor {value.name!r} has ONNX type {tensor.elem_type}, which Triton's "
                             f"{sorted(ONNX_DTYPES.values())} do not cover")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not dims or dims[0] > 1:
            raise ValueError(f"{path}: tensor {value.name!r} has shape {dims}; its first axis must be the batch")
        if -1 in dims[1:]:
            raise ValueError(f"{path}: tensor {value.name!r} has shape {dims}; a coded ensemble needs every axis "
                             "but the batch fixed (export the model with fixed input sizes)")
        return TensorSpec(value.name, ONNX_DTYPES[tensor.elem_type], tuple(dims[1:]))

    return spec(inputs[0]), spec(graph.output[0])


def onnx_model(name: str, onnx_file: Path, accelerator: str | None = None, instances: int = 1,
               member: bool = False) -> OnnxModelSpec:
    """``member``: called only by a coded ensemble's scheduler, which batches its calls itself."""
    query, output = onnx_tensors(onnx_file)
    return OnnxModelSpec(name, Path(onnx_file), (query,), (output,), instances=instances, accelerator=accelerator,
                         dynamic_batching=not member)


def coded_ensemble(
    name: str, code: CodeSpec, deployed_onnx: Path, coded_onnx: Path | None = None, *,
    answer: TensorSpec | None = None, files: tuple[Path, ...] = (), deadline_ms: float = DEFAULT_DEADLINE_MS,
    accelerator: str | None = None, topology: str = "dedicated",
) -> tuple[ModelSpec, ...]:
    """A coded ensemble with its own members, encoder and decoder.

    Data members ``<name>_member_<i>`` run the deployed model on the original queries; coded
    members ``<name>_coded_<j>`` run ``coded_onnx`` (a ParM parity model, a Coded-InvNet backup) or,
    for codes that need no training, the deployed model, on coded queries. ``answer`` is what clients
    receive when it is not the members' output (Coded-InvNet: logits from features, by the decoder).
    """
    built = make_code(code)
    if built.learned_parity != (coded_onnx is not None):
        raise ValueError(f"{code.kind} {'needs' if built.learned_parity else 'takes no'} parity model")
    query, member_output = onnx_tensors(deployed_onnx)
    parities = ()
    if topology == "every_worker":
        # worker w: the deployed and the parity model, one call at a time (the scheduler's dispatch)
        members = tuple(onnx_model(f"{name}_worker_{w}", deployed_onnx, accelerator, member=True)
                        for w in range(built.num_workers))
        parities = tuple(onnx_model(f"{name}_worker_{w}_parity", coded_onnx or deployed_onnx, accelerator, member=True)
                         for w in range(built.num_workers))
    else:
        members = (*(onnx_model(f"{name}_member_{i}", deployed_onnx, accelerator, member=True)
                     for i in range(built.k if built.systematic else 0)),
                   *(onnx_model(f"{name}_coded_{j}", coded_onnx or deployed_onnx, accelerator, member=True)
                     for j in range(built.num_coded)))
    ensemble = CodedEnsembleSpec(
        name, code, tuple(m.name for m in members), query, answer or member_output, deadline_ms=deadline_ms,
        member_output=member_output if answer else None, files=tuple(files), topology=topology,
        parity_members=tuple(m.name for m in parities),
    )
    return (*members, *parities, ensemble, *ensemble.codec_models())


def deployment(
    name: str, code: CodeSpec, deployed_onnx: Path, parity_onnx: Path | None = None, *,
    deadline_ms: float = DEFAULT_DEADLINE_MS, accelerator: str | None = None,
) -> RepositorySpec:
    """The deployed model served directly as ``name`` and its coded ensemble ``<name>_<family>``;
    clients query both with the deployed model's tensor names."""
    family = code.kind.split("-")[0]
    return RepositorySpec((
        onnx_model(name, deployed_onnx, accelerator),
        *coded_ensemble(f"{name}_{family}", code, deployed_onnx, parity_onnx, deadline_ms=deadline_ms,
                        accelerator=accelerator),
    ))


def invnet_repository_spec(name: str, k: int, onnx_dir: Path, deadline_ms: float) -> RepositorySpec:
    """A Coded-InvNet ensemble from the files export/train_invnet.py wrote: data members serve f (features),
    the backup member f . g on the whole group, and the decoder model applies the head, so clients get
    logits."""
    onnx_dir = Path(onnx_dir)
    classes = MLPHead.load(onnx_dir / INVNET_HEAD_FILE).layers[-1][0].shape[0]
    return RepositorySpec(coded_ensemble(
        name, CodeSpec("coded-invnet", k, {"head_file": INVNET_HEAD_FILE}), onnx_dir / INVNET_FEATURES_ONNX,
        onnx_dir / invnet_backup_onnx(k), answer=TensorSpec("logits", "FP32", (classes,)),
        files=(onnx_dir / INVNET_HEAD_FILE,), deadline_ms=deadline_ms,
    ))


def default_repository_spec(onnx_dir: Path, accelerator: str | None = None,
                            deadline_ms: float = DEFAULT_DEADLINE_MS,
                            codes: tuple[str, ...] = SHIPPED_CODES) -> RepositorySpec:
    """The shipped repository: LeNet-5 on Fashion-MNIST served directly (``lenet5``) and behind each of
    ``codes``: ``lenet5_parm`` (ParM, addition encoder, k=2, the parity model from ``onnx_dir``),
    ``lenet5_nercc`` (``DEFAULT_NERCC``: K=8, 9 workers running the deployed model) and ``iresnet_invnet``
    (Coded-InvNet, k=4, its own invertible classifier and backup model from ``onnx_dir``).
    ``codes=("parm",)`` gives the smaller ParM-only repository (3 members instead of 17)."""
    onnx_dir = Path(onnx_dir)
    unknown = set(codes) - set(SHIPPED_CODES)
    if unknown or not codes:
        raise ValueError(f"codes must be some of {SHIPPED_CODES}, got {codes}")
    deployed = onnx_dir / DEFAULT_DEPLOYED_ONNX
    models = deployment("lenet5", CodeSpec("parm-addition", 2), deployed, onnx_dir / DEFAULT_PARITY_ONNX,
                        deadline_ms=deadline_ms, accelerator=accelerator).models
    if "parm" not in codes:
        models = models[:1]
    if "nercc" in codes:
        models += coded_ensemble("lenet5_nercc", DEFAULT_NERCC, deployed, deadline_ms=deadline_ms,
                                 accelerator=accelerator)
    if "invnet" in codes:
        models += invnet_repository_spec(DEFAULT_INVNET, DEFAULT_INVNET_K, onnx_dir, deadline_ms).models
    return RepositorySpec(models)


def pinned(spec: RepositorySpec) -> RepositorySpec:
    """``spec`` with every coded ensemble placing data role i on member i, forming groups per request and
    without the circuit breaker: for measurements that unload member j and expect exactly the queries of
    slot j decoded (a breaker would keep skipping j for a while after it is loaded again)."""
    return RepositorySpec(tuple(replace(m, pin_roles=True, group_close_us=0, suspend_after_misses=0)
                                if isinstance(m, CodedEnsembleSpec) else m for m in spec.models))


def onnx_files_of_default_repository(repository: Path, target: Path) -> Path:
    """The ONNX files a default repository was written from, for building other repositories."""
    target.mkdir(parents=True, exist_ok=True)
    copies = {
        DEFAULT_DEPLOYED_ONNX: "lenet5/1/model.onnx",
        DEFAULT_PARITY_ONNX: "lenet5_parm_coded_0/1/model.onnx",
        INVNET_FEATURES_ONNX: f"{DEFAULT_INVNET}_member_0/1/model.onnx",
        invnet_backup_onnx(DEFAULT_INVNET_K): f"{DEFAULT_INVNET}_coded_0/1/model.onnx",
        INVNET_HEAD_FILE: f"{DEFAULT_INVNET}/1/{INVNET_HEAD_FILE}",
    }
    for name, source in copies.items():
        (target / name).write_bytes((repository / source).read_bytes())
    return target


def with_remote_members(models: tuple[ModelSpec, ...], worker_urls: list[str]) -> RepositorySpec:
    """A frontend: the coded ensemble of ``models`` with member i served by the Triton server at
    ``worker_urls[i]`` (host:port of its gRPC endpoint), under the same model name, through local
    proxies. Every worker serves ``worker_repository(models)``. With several coded ensembles in ``models``
    (the shipped repository), the first one is the frontend's (``lenet5_parm``)."""
    ensemble, models = _first_ensemble(models)
    if len(worker_urls) != len(ensemble.members):
        raise ValueError(f"{ensemble.name} has {len(ensemble.members)} members, got {len(worker_urls)} worker urls")
    local = {m.name: m for m in models if isinstance(m, OnnxModelSpec)}
    served = {m: _worker_model_name(local[m]) for m in ensemble.members}
    proxies = tuple(
        RemoteModelSpec(f"{member}_remote", url, served[member], local[member].inputs, local[member].outputs,
                        timeout_ms=ensemble.timeout_ms)
        for member, url in zip(ensemble.members, worker_urls)
    )
    frontend = replace(ensemble, members=tuple(p.name for p in proxies))
    return RepositorySpec((*proxies, frontend, *frontend.codec_models()))


def worker_repository(models: tuple[ModelSpec, ...]) -> RepositorySpec:
    """What every worker of a cluster serves: each distinct ONNX file of the first ensemble's members, once."""
    distinct = {}
    for model in _first_ensemble(models)[1]:
        if isinstance(model, OnnxModelSpec):
            distinct.setdefault(_worker_model_name(model), replace(model, name=_worker_model_name(model)))
    return RepositorySpec(tuple(distinct.values()))


def write_cluster(models: tuple[ModelSpec, ...], worker_urls: list[str], target: Path) -> tuple[Path, Path]:
    """Write ``target/frontend`` (the coded ensemble, its members on ``worker_urls``) and ``target/worker``."""
    target = Path(target)
    return (write_repository(with_remote_members(models, worker_urls), target / "frontend"),
            write_repository(worker_repository(models), target / "worker"))


def _first_ensemble(models: tuple[ModelSpec, ...]) -> tuple[CodedEnsembleSpec, tuple[ModelSpec, ...]]:
    """The first coded ensemble of ``models``, and ``models`` without the ONNX models of other ensembles."""
    ensemble = next(m for m in models if isinstance(m, CodedEnsembleSpec))
    return ensemble, tuple(m for m in models if not isinstance(m, OnnxModelSpec) or m.name in ensemble.members)


def _worker_model_name(model: OnnxModelSpec) -> str:
    return Path(model.onnx_file).stem
