"""Compute per query: multiply-accumulates (MACs) counted from ONNX graphs, and each code's redundant work.

``onnx_macs`` counts the MACs of one query (batch 1) through Conv, ConvTranspose, Gemm and MatMul
nodes, the layers that dominate these models; element-wise operations, pooling and normalisation are
left out (a few percent here). ``code_overhead`` turns a code and the MACs of the deployed and coded
models into the redundant work per query: the coded members' calls, amortised over the k queries of a
group, beyond the k calls of the deployed model that an uncoded deployment makes anyway, plus the
encoder's and decoder's arithmetic (codec MACs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from coded_serving.codes import CodeSpec, make_code


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """The shape of every input and output of the graph's nodes for a batch of 1, by running the graph once
    on zeros with onnxruntime (static shape inference loses sizes after reshapes of the batch axis)."""
    import onnxruntime

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {init.name for init in model.graph.initializer}
    (query,) = [i for i in model.graph.input if i.name not in initializers]
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in query.type.tensor_type.shape.dim]
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                known.add(name)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {query.name: np.zeros([1, *dims[1:]], np.float32)})
    shapes = {name: list(np.shape(value)) for name, value in zip(names, values)}
    shapes[query.name] = [1, *dims[1:]]
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    return shapes


def onnx_macs(path: Path | str) -> int:
    """MACs of one query (batch 1) through the graph's Conv/ConvTranspose/Gemm/MatMul nodes."""
    model = onnx.load(str(path))
    shapes = _shapes(model)
    weights = {init.name: numpy_helper.to_array(init).shape for init in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            kernel = shapes.get(node.input[1]) or list(weights[node.input[1]])
            if node.op_type == "Conv":  # every output element: C_in/group * kh * kw products
                total += int(np.prod(shapes[node.output[0]])) * int(np.prod(kernel[1:]))
            else:  # every input element scatters into C_out/group * kh * kw outputs
                total += int(np.prod(shapes[node.input[0]])) * int(np.prod(kernel[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            transposed_b = any(x.name == "transB" and x.i for x in node.attribute)
            inner = a[-1] if not any(x.name == "transA" and x.i for x in node.attribute) else a[-2]
            columns = b[-2] if transposed_b else b[-1]
            rows = int(np.prod(a[:-1])) if node.op_type == "MatMul" else a[0] if len(a) > 1 else 1
            total += rows * inner * columns
    return total


@dataclass(frozen=True)
class Overhead:
    """Redundant work of a code per query: coded workers per data query and MACs."""

    #: extra workers / k: 1/k for ParM and Coded-InvNet, S/K for Berrut and NeRCC (N = K + S)
    extra_workers_per_query: float
    #: MACs of the coded members' calls beyond the deployed model's own, per query
    model_macs: float
    #: encoder and decoder arithmetic per query (one decode, as with one missing result)
    codec_macs: float
    #: MACs of the deployed model on one query, for ratios
    deployed_macs: int

    @property
    def macs(self) -> float:
        return self.model_macs + self.codec_macs

    @property
    def relative(self) -> float:
        """Redundant MACs per query as a share of one deployed-model call."""
        return self.macs / self.deployed_macs


def code_overhead(code: CodeSpec, deployed_macs: int, coded_macs: int | None = None, input_size: int = 784,
                  output_size: int = 10) -> Overhead:
    """``coded_macs``: MACs of one call of the coded model (a parity model, a backup f . g); default the deployed model.

    Non-systematic Berrut/NeRCC run the deployed model N times per K queries, so N - K calls per group
    are redundant; systematic codes and ParM run k originals plus the coded calls.
    """
    k = code.k
    coded_macs = deployed_macs if coded_macs is None else coded_macs
    if code.kind in ("berrut", "nercc"):
        workers = int(code.params["num_workers"])
        coded = workers - (k if code.params.get("systematic", False) else 0)
        redundant_calls = workers - k
        model_macs = redundant_calls * deployed_macs / k
        # encode: an N x K matrix on the inputs (non-systematic) or an (N-K) x K one; decode: K x |F| on outputs
        encoded_rows = coded
        codec = (encoded_rows * k * input_size + k * (workers - 1) * output_size) / k
        return Overhead(redundant_calls / k, model_macs, codec, deployed_macs)
    coded = make_code(code).num_coded
    if code.kind.startswith("parm"):
        # encode: a sum of k inputs (adds, counted as MACs); decode: k - 1 subtractions of the output
        codec = (k * input_size + (k - 1) * output_size) / k
        return Overhead(coded / k, coded * coded_macs / k, codec, deployed_macs)
    if code.kind == "coded-invnet":
        # the backup f . g (its cost includes g); decode: k z_p - sum of the k - 1 others, on the features
        codec = k * output_size / k
        return Overhead(coded / k, coded * coded_macs / k, codec, deployed_macs)
    raise ValueError(f"no overhead model for {code.kind}")


def fmt_macs(value: float) -> str:
    """1234567 -> '1.23 M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f}"


_ARCH_MACS: dict[str, int] = {}


def arch_macs(arch: str) -> int:
    """MACs of one query through one of the project's architectures (``training.nets``), from its ONNX graph
    (weights do not matter for the count, so no trained file is needed)."""
    if arch not in _ARCH_MACS:
        import tempfile

        from coded_serving.training.nets import make_net
        from coded_serving.training.onnx_export import export_onnx

        with tempfile.TemporaryDirectory() as scratch:
            export_onnx(make_net(arch), Path(scratch) / f"{arch}.onnx")
            _ARCH_MACS[arch] = onnx_macs(Path(scratch) / f"{arch}.onnx")
    return _ARCH_MACS[arch]


def invnet_macs(blocks: tuple[int, ...], hidden: tuple[int, ...], head_hidden: tuple[int, ...], k: int,
                generator_width: int = 16) -> dict[str, int]:
    """Coded-InvNet's parts per call, from their ONNX graphs: f (a data worker), f . g on a group of k
    (the backup worker), and the head h (in the ensemble's decoder model); weights do not matter."""
    import tempfile

    from coded_serving.training.invnet_nets import IMAGE_SHAPE, Backup, InvertibleClassifier, SymmetricGenerator
    from coded_serving.training.onnx_export import export_onnx

    classifier = InvertibleClassifier(tuple(blocks), tuple(hidden), tuple(head_hidden)).eval()
    features = int(np.prod(IMAGE_SHAPE))
    widths = [features, *head_hidden, 10]
    head = sum(a * b for a, b in zip(widths, widths[1:]))
    with tempfile.TemporaryDirectory() as scratch:
        export_onnx(classifier.features, Path(scratch) / "f.onnx", output_name="features")
        export_onnx(Backup(SymmetricGenerator(generator_width), classifier.features).eval(), Path(scratch) / "b.onnx",
                    output_name="features", sample_shape=(k, *IMAGE_SHAPE))
        return {"f": onnx_macs(Path(scratch) / "f.onnx"), "backup": onnx_macs(Path(scratch) / "b.onnx"), "head": head}
