"""Coded-InvNet's degraded-mode accuracy measured through a live tritonserver, and its report section.

For each k, a server runs one Coded-InvNet ensemble; the test set is sent once with every member up
(available accuracy: F itself) and once per data member with that member unloaded, so every test
image is reconstructed exactly once (degraded accuracy against the label, recovery accuracy
against F's own answer).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tritonclient.http as http

from coded_serving.client import ModelClient, load_retrying
from coded_serving.deployment.builder import pinned
from coded_serving.deployment.builder import invnet_repository_spec
from coded_serving.deployment.launcher import ServerConfig, TritonServer, free_port, with_admin_key
from coded_serving.deployment.config_writer import write_repository

#: as large as the ensemble's max batch that is a whole number of groups, so groups never straddle requests
MAX_BATCH = 64
#: no healthy member misses this on a loaded machine: only the unloaded member is reconstructed
MEASURE_DEADLINE_MS = 10000.0
#: docs/codes.md section 3: Coded-InvNet's published figure at k = 10 and ParM's in the same setting
PUBLISHED = {"coded_invnet_k10": 0.859, "parm_k10": 0.534}


def _infer_all(client: ModelClient, images: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    batch = k * (MAX_BATCH // k)
    outputs, reconstructed = [], []
    for start in range(0, len(images), batch):
        result = client.infer(images[start:start + batch])
        outputs.append(result.outputs)
        reconstructed.append(result.reconstructed)
    return np.concatenate(outputs), np.concatenate(reconstructed)


def _wait_unloaded(admin: http.InferenceServerClient, model: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while admin.is_model_ready(model):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{model} still ready {timeout_s:.0f} s after unloading")
        time.sleep(0.1)


def measure_served(url: str, ensemble: str, k: int, images: np.ndarray, labels: np.ndarray) -> dict:
    """Figures of one ensemble on a running server; ``len(images)`` must be a multiple of k."""
    if len(images) % k:
        raise ValueError(f"{len(images)} images do not fill groups of {k}")
    slots = np.arange(len(images)) % k
    admin = with_admin_key(http.InferenceServerClient(url), url)
    start = time.perf_counter()
    try:
        with ModelClient(url, ensemble) as client:
            logits, reconstructed = _infer_all(client, images, k)
            own = logits.argmax(axis=1)
            figures = {"available_accuracy": float(np.mean(own == labels)),
                       "decoded_with_all_up": float(np.mean(reconstructed))}
            predictions = np.empty(len(images), np.int64)
            unexpected = 0
            for j in range(k):
                member = f"{ensemble}_member_{j}"
                admin.unload_model(member)
                _wait_unloaded(admin, member)
                served, flags = _infer_all(client, images, k)
                load_retrying(admin, member, attempts=5)
                predictions[slots == j] = served[slots == j].argmax(axis=1)
                unexpected += int(np.sum(flags != (slots == j)))
    finally:
        admin.close()
    return figures | {
        "degraded_accuracy": float(np.mean(predictions == labels)),
        "recovery_accuracy": float(np.mean(predictions == own)),
        "unexpected_reconstruction_flags": unexpected,
        "queries": len(images),
        "seconds": round(time.perf_counter() - start, 1),
    }


def measure_invnet(onnx_dir: Path, ks: tuple[int, ...], images: np.ndarray, labels: np.ndarray,
                   workdir: Path) -> dict[int, dict]:
    """One server per k (only that ensemble loaded), built from the exported files in ``onnx_dir``."""
    figures = {}
    for k in ks:
        name = f"invnet_k{k}"
        repository = write_repository(
            pinned(invnet_repository_spec(name, k, onnx_dir, MEASURE_DEADLINE_MS)), Path(workdir) / name
        )
        config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        with TritonServer(config, Path(workdir) / f"{name}.log") as server:
            figures[k] = measure_served(server.config.http_url, name, k, images, labels)
    return figures


def _queries(served: dict[int, dict]) -> str:
    counts = sorted({figures["queries"] for figures in served.values()})
    return " / ".join(str(count) for count in counts)


def _overheads(classifier: dict, k: int) -> tuple[str, str]:
    """Redundant MACs per query of the trained backup and of the mean-image baseline, with their x F."""
    from coded_serving.benchmarks.compute import code_overhead, fmt_macs, invnet_macs
    from coded_serving.codes import CodeSpec

    macs = invnet_macs(tuple(classifier["blocks"]), tuple(classifier["hidden"]), tuple(classifier["head_hidden"]), k)
    deployed, spec = macs["f"] + macs["head"], CodeSpec("coded-invnet", k)
    trained = code_overhead(spec, deployed, macs["backup"], output_size=784)
    mean = code_overhead(spec, deployed, macs["f"], output_size=784)
    mean_macs = mean.macs + 784  # the mean of the k images, per group of k: k * 784 / k
    return (f"{fmt_macs(trained.macs)} ({trained.relative:.2f}x)",
            f"{fmt_macs(mean_macs)} ({mean_macs / deployed:.2f}x)")


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def invnet_section(training: dict, served: dict[int, dict]) -> str:
    """The report's Coded-InvNet section, from the training figures (export/train_invnet.py's JSON)
    and the served ones (``measure_invnet``)."""
    classifier = training["classifier"]
    lines = [
        "## Coded-InvNet (k data members + 1 backup member, overhead 1/k)",
        "",
        f"F = h . f: i-ResNet f (blocks {classifier['blocks']}, hidden widths {classifier['hidden']}, "
        f"Lipschitz coefficient {classifier['lipschitz_coeff']} per convolution, 784 features), "
        f"ReLU-MLP head h (hidden {classifier['head_hidden']}), Manifold Mixup (Beta(1, 1)), "
        f"{classifier['epochs']} epochs. Backup encoder g: symmetric U-Net regression generator (not the "
        f"reference's conditional GAN), L1 to x_p* = f^-1(mean f(x_i)) ({training['inversion_iterations']} "
        "fixed-point iterations) plus feature MSE to mean f(x_i). The data members serve f and return features; "
        "the backup member serves f . g on the whole group; the decoded feature k z_p - sum of the others, and the "
        "head h for every answer (decoded or not), are computed in the ensemble's decoder model (`<name>_decoder`), "
        "so clients get logits.",
        "",
        f"Measured through the live tritonserver on {_queries(served)} Fashion-MNIST test images, each data member "
        "unloaded in turn (every image reconstructed once); deadline "
        f"{MEASURE_DEADLINE_MS:.0f} ms so only the unloaded member is decoded. Beside it, its own baseline: an "
        "untrained g, which outputs the mean image of the group (offline). Overheads per query: extra workers, and "
        "redundant MACs from the ONNX graphs (coded_serving/benchmarks/compute.py; x F: multiples of one call of "
        "F = h . f).",
        "",
        "| k | extra workers / query | redundant MACs / query (x F) | available (F) | degraded (vs label) "
        "| recovery (vs F) | offline degraded | mean-image baseline: redundant MACs / query (x F) "
        "| mean-image baseline: offline degraded | published |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, figures in sorted(served.items()):
        offline = training["generators"][str(k)]
        published = (f"Coded-InvNet {_percent(PUBLISHED['coded_invnet_k10'])}, ParM {_percent(PUBLISHED['parm_k10'])}"
                     if k == 10 else "")
        trained_macs, mean_macs = _overheads(classifier, k)
        lines.append(
            f"| {k} | {1 / k:.3g} | {trained_macs} | {_percent(figures['available_accuracy'])} "
            f"| {_percent(figures['degraded_accuracy'])} | {_percent(figures['recovery_accuracy'])} "
            f"| {_percent(offline['test']['degraded_accuracy'])} | {mean_macs} "
            f"| {_percent(offline['test_mean_image']['degraded_accuracy'])} | {published} |"
        )
    generators = "; ".join(f"k={k} {g['train_seconds']:.0f} s" for k, g in sorted(training["generators"].items(),
                                                                                 key=lambda item: int(item[0])))
    load = training["load_average_1min"]
    lines += [
        "",
        f"Training on {training['threads']} CPU threads: {training['total_seconds']:.0f} s wall, "
        f"{training['total_cpu_seconds']:.0f} s CPU (classifier {classifier['train_seconds']:.0f} s; targets and "
        f"generators: {generators}); 1-minute load average {load['start']:.1f} at the start, {load['end']:.1f} at the end "
        "(the machine is shared: wall time counts the other jobs too).",
    ]
    partial = [f"classifier {classifier['epochs_trained_this_run']} of {classifier['epochs']} epochs"] if (
        classifier["epochs_trained_this_run"] < classifier["epochs"]) else []
    partial += [f"generator k={k} {g['epochs_trained_this_run']} of {g['epochs']} epochs"
                for k, g in training["generators"].items() if g["epochs_trained_this_run"] < g["epochs"]]
    if partial:
        lines.append(f"That run resumed from checkpoints and trained only: {', '.join(partial)}.")
    lines.append("The published figures are the paper's own setting (docs/codes.md section 3), not a run here.")
    return "\n".join(lines) + "\n"
