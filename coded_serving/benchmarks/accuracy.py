"""Accuracy of coded ensembles with stragglers, measured through a live tritonserver.

One benchmark repository: per deployed architecture a pool of workers ``<arch>_worker_<i>`` running
the deployed ONNX model, shared by every ensemble (ParM's data members and all the workers of the
training-free codes), plus one member per ParM parity model. Stragglers are made by unloading pool
workers: a member that is gone counts as missing at once, so decoding is immediate and the figures
measure codes, not timing (the ensembles' deadline is generous for the same reason). The server holds
one phase, (architecture, straggler count), at a time: its ensembles and their members.

The straggler model is coded_serving.codes.stragglers'. A *round* is one set of unavailable workers; every
ensemble whose model includes that set gets a chunk of the test set in it, so each configuration
answers every test image once under stragglers, and once more with no straggler (available accuracy).
Degraded-mode accuracy counts the queries whose own original was unavailable: every query of a
non-systematic code; for ParM and the systematic variants, the unavailable data workers' queries.
Chunks are weighed by the number of missing originals of their set, and each test image of a chunk
is placed in a missing slot of a coding group whose other slots hold random test images (not scored).

The same plan runs through ``LiveExecutor`` (the server) or ``OfflineExecutor`` (the codes'
encode/decode around onnxruntime, no Triton), so the live figures can be checked request by request.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from threading import local

import numpy as np
import tritonclient.http as http

from coded_serving.client import ModelClient, load_retrying
from coded_serving.codes import Code, CodeSpec, make_code
from coded_serving.training.data import Dataset
from coded_serving.deployment.builder import onnx_model, onnx_tensors, pinned
from coded_serving.training.pipeline import ModelRecord, ParityModel, TrainingPlan, train_models
from coded_serving.deployment.launcher import PROJECT_ROOT, with_admin_key
from coded_serving.deployment.config_writer import write_repository
from coded_serving.specs import CodedEnsembleSpec, RepositorySpec, codec_model_names
from coded_serving.codes.stragglers import Pattern, available_mask, missing_slots, straggler_patterns
from coded_serving.training.tuning import FAMILIES, CurveCase, Tuned, TuningGrid, file_digest, onnx_predict, tune_cases

NO_STRAGGLER: Pattern = ()
DEFAULT_OUT = PROJECT_ROOT / "build" / "accuracy"
DEFAULT_ADOPT = PROJECT_ROOT / "build" / "default" / "checkpoints"


@dataclass(frozen=True)
class BenchmarkPaths:
    """Where the benchmark's stages keep their artifacts (git-ignored build/ by default)."""

    out: Path = DEFAULT_OUT

    @property
    def models(self) -> Path:
        return self.out / "models"

    @property
    def tuning(self) -> Path:
        return self.out / "tuning.json"

    @property
    def measurements(self) -> Path:
        return self.out / "measurements.json"

    @property
    def repository(self) -> Path:
        return self.out / "repository"

    @property
    def server_log(self) -> Path:
        return self.out / "server.log"


def pool_worker(arch: str, index: int) -> str:
    return f"{arch}_worker_{index}"


@dataclass(frozen=True)
class Entry:
    """One coded ensemble of the benchmark, measured with ``stragglers`` of its workers unavailable."""

    arch: str
    code: CodeSpec
    stragglers: int

    @cached_property
    def built(self) -> Code:
        return make_code(self.code)

    @property
    def learned(self) -> bool:
        return self.built.learned_parity

    @property
    def name(self) -> str:
        kind = self.code.kind.replace("-", "_")
        if self.learned:
            return f"{self.arch}_{kind}_k{self.code.k}"
        return f"{self.arch}_{kind}{'_sys' if self.built.systematic else ''}_k{self.code.k}_s{self.stragglers}"

    @property
    def parity(self) -> ParityModel | None:
        return ParityModel(self.arch, self.code.kind, self.code.k) if self.learned else None

    def members(self) -> tuple[str, ...]:
        """Pool workers in worker order (worker w is pool worker w), then the parity model for ParM."""
        if self.learned:
            return (*(pool_worker(self.arch, i) for i in range(self.code.k)), self.parity.name)
        return tuple(pool_worker(self.arch, w) for w in range(self.built.num_workers))

    @property
    def pool_size(self) -> int:
        return self.code.k if self.learned else self.built.num_workers


@dataclass(frozen=True)
class AccuracyGrid:
    """What the benchmark measures: ParM for every (encoder, k) (one straggler, the most it tolerates)
    and every training-free case; ``tuning`` also sets the straggler subsets the measurement uses."""

    archs: tuple[str, ...] = ("mlp", "lenet5")
    parm: tuple[tuple[str, int], ...] = (
        ("parm-addition", 2), ("parm-addition", 3), ("parm-addition", 4),
        ("parm-addition", 8), ("parm-addition", 10), ("parm-addition", 12),
        ("parm-concatenation", 2), ("parm-concatenation", 4),
    )
    ks: tuple[int, ...] = (2, 4, 8, 10, 12)
    stragglers: tuple[int, ...] = (1, 2, 3)
    systematic: tuple[bool, ...] = (False, True)
    tuning: TuningGrid = field(default_factory=TuningGrid)

    def parity_models(self) -> list[ParityModel]:
        return [ParityModel(arch, kind, k) for arch in self.archs for kind, k in self.parm]

    def curve_cases(self) -> list[CurveCase]:
        return [CurveCase(family, k, s, systematic) for family in FAMILIES for systematic in self.systematic
                for k in self.ks for s in self.stragglers]

    def entries(self, tuned: dict[str, dict[str, Tuned]]) -> list[Entry]:
        """ParM entries, then every curve case with its tuned code (``tuned[arch][case.key]``)."""
        entries = [Entry(p.arch, p.code, 1) for p in self.parity_models()]
        for arch in self.archs:
            entries += [Entry(arch, tuned[arch][case.key].code, case.stragglers) for case in self.curve_cases()]
        return entries


def train_grid(grid: AccuracyGrid, plan: TrainingPlan, data: Dataset, models: Path,
               adopt: Path | None = None) -> dict[str, ModelRecord]:
    """The grid's deployed and parity models, trained or resumed, as ONNX files in ``models``."""
    return train_models(grid.archs, grid.parity_models(), plan, data, models, adopt)


def tune_grid(grid: AccuracyGrid, data: Dataset, models: Path, cache: Path,
              threads: int = 1) -> dict[str, dict[str, Tuned]]:
    """Every curve case tuned on the validation split against the deployed ONNX file the pool serves."""
    tuned = {}
    for arch in grid.archs:
        onnx_file = Path(models) / f"{arch}.onnx"
        tuned[arch] = tune_cases(arch, grid.curve_cases(), onnx_predict(onnx_file, threads), data.val.images,
                                 data.val.labels, grid.tuning, cache, file_digest(onnx_file))
    return tuned


@dataclass(frozen=True)
class Request:
    """Whole coding groups of test images (indices), and which queries are scored."""

    images: np.ndarray
    scored: np.ndarray


@dataclass(frozen=True)
class Task:
    """One ensemble's share of one round."""

    entry: Entry
    pattern: Pattern
    requests: tuple[Request, ...]


def layout_requests(k: int, slots: np.ndarray, chunk: np.ndarray, num_images: int, rng: np.random.Generator,
                    max_batch: int) -> tuple[Request, ...]:
    """``chunk``'s images in the ``slots`` of consecutive coding groups; every other slot, and the last
    group's unused scored slots, holds a random test image that is not scored."""
    per_group = len(slots)
    groups = -(-len(chunk) // per_group)
    images = rng.integers(0, num_images, size=(groups, k))
    scored = np.zeros((groups, k), dtype=bool)
    block = np.full(groups * per_group, -1)
    block[: len(chunk)] = chunk
    block = block.reshape(groups, per_group)
    images[:, slots] = np.where(block >= 0, block, images[:, slots])
    scored[:, slots] = block >= 0
    step = max_batch // k
    return tuple(Request(images[g:g + step].ravel(), scored[g:g + step].ravel()) for g in range(0, groups, step))


def split_by_weight(order: np.ndarray, weights: Sequence[int]) -> list[np.ndarray]:
    """Consecutive chunks of ``order`` with sizes proportional to ``weights`` (largest remainder)."""
    weights = np.asarray(weights, dtype=float)
    exact = len(order) * weights / weights.sum()
    sizes = np.floor(exact).astype(int)
    sizes[np.argsort(-(exact - sizes), kind="stable")[: len(order) - sizes.sum()]] += 1
    return np.split(order, np.cumsum(sizes)[:-1])


def plan(entry: Entry, num_images: int, grid: TuningGrid, max_batch: int) -> list[Task]:
    """The no-straggler task, then one task per straggler set that leaves originals missing."""
    code = entry.built
    order = np.random.default_rng([grid.seed, 1]).permutation(num_images)
    rng = np.random.default_rng([grid.seed, 2, zlib.crc32(entry.name.encode())])
    tasks = [Task(entry, NO_STRAGGLER, layout_requests(code.k, np.arange(code.k), order, num_images, rng, max_batch))]
    patterns = straggler_patterns(code.num_workers, entry.stragglers, grid.subsets, grid.seed)
    weights = [len(missing_slots(code, pattern)) for pattern in patterns]
    for pattern, chunk in zip(patterns, split_by_weight(order, weights)):
        if len(chunk):
            slots = missing_slots(code, pattern)
            tasks.append(Task(entry, pattern, layout_requests(code.k, slots, chunk, num_images, rng, max_batch)))
    return tasks


def expected_reconstructed(code: Code, pattern: Pattern, num_queries: int) -> np.ndarray:
    flags = np.zeros((num_queries // code.k, code.k), dtype=bool)
    flags[:, missing_slots(code, pattern)] = True
    return flags.ravel()


class OfflineExecutor:
    """What an ensemble must answer, computed without Triton: the code's encode and decode around
    onnxruntime on the same ONNX files the members serve."""

    def __init__(self, onnx_dir: Path):
        self.onnx_dir = Path(onnx_dir)
        self._predict: dict[str, object] = {}

    def _model(self, name: str):
        if name not in self._predict:
            self._predict[name] = onnx_predict(self.onnx_dir / f"{name}.onnx")
        return self._predict[name]

    def prepare(self, entries: Iterable[Entry], pattern: Pattern) -> None:
        """Nothing to load: the pattern is applied in ``answer``."""

    def deployed(self, arch: str, images: np.ndarray) -> np.ndarray:
        return self._model(arch)(images)

    def answer(self, entry: Entry, pattern: Pattern, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        code = entry.built
        grouped = images.reshape(-1, code.k, *images.shape[1:])
        coded = code.encode(grouped)
        coded_model = self._model(entry.parity.name if entry.learned else entry.arch)
        results = [self.deployed(entry.arch, grouped[:, i]) for i in range(code.k)] if code.systematic else []
        results += [coded_model(coded[:, j]) for j in range(code.num_coded)]
        results = np.stack(results, axis=1)
        needs_decode = not code.systematic or len(missing_slots(code, pattern)) > 0
        estimates = code.decode(results, available_mask(code, pattern)) if needs_decode else results[:, : code.k]
        return code.postprocess(estimates.reshape(len(images), -1)), expected_reconstructed(code, pattern, len(images))


class LiveExecutor:
    """The server: ``prepare`` makes exactly the round's models loaded (copying them into the live
    repository from the fully written one): the phase's ensembles and their members, less the pool
    workers of the pattern. Everything else is unloaded: every model is a backend stub process, and with
    all phases loaded at once (about 100 stubs) this machine refused to fork more."""

    def __init__(self, url: str, written: Path, live: Path):
        self.url = url
        self.written, self.live = Path(written), Path(live)
        self.loaded: set[str] = set()
        self._clients = local()
        self._pool = ThreadPoolExecutor(4)  # loads in parallel; its threads keep their admin clients

    def _admin(self) -> http.InferenceServerClient:
        if not hasattr(self._clients, "admin"):
            self._clients.admin = with_admin_key(http.InferenceServerClient(self.url, network_timeout=600.0), self.url)
        return self._clients.admin

    def _client(self, model: str) -> ModelClient:
        clients = self._clients.__dict__.setdefault("models", {})
        if model not in clients:
            clients[model] = ModelClient(self.url, model, timeout_s=600.0)
        return clients[model]

    def _load(self, name: str) -> None:
        load_retrying(self._admin(), name, attempts=3)

    def _unload(self, names: list[str]) -> None:
        list(self._pool.map(lambda name: self._admin().unload_model(name), names))
        while any(self._admin().is_model_ready(name) for name in names):
            time.sleep(0.05)

    def prepare(self, entries: Iterable[Entry], pattern: Pattern) -> None:
        entries = list(entries)
        gone = {pool_worker(entry.arch, i) for entry in entries for i in pattern}
        wanted = ({entry.name for entry in entries} | {m for entry in entries for m in codec_model_names(entry.name)}
                  | ({m for entry in entries for m in entry.members()} - gone))
        for name in wanted - self.loaded:
            if not (self.live / name).exists():
                shutil.copytree(self.written / name, self.live / name)
        self._unload(sorted(self.loaded - wanted))
        list(self._pool.map(self._load, sorted(wanted - self.loaded)))
        self.loaded = wanted

    def deployed(self, arch: str, images: np.ndarray) -> np.ndarray:
        client = self._client(pool_worker(arch, 0))
        return np.concatenate([client.infer(images[i:i + 64]).outputs for i in range(0, len(images), 64)])

    def answer(self, entry: Entry, pattern: Pattern, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self._client(entry.name).infer(images)
        return result.outputs, result.reconstructed


@dataclass
class TaskResult:
    name: str
    pattern: Pattern
    indices: np.ndarray  # scored test images
    outputs: np.ndarray  # their answers
    #: scored or not, answers whose reconstructed flag contradicts the straggler model
    #: (a healthy member past the deadline would show here)
    unexpected: int
    #: max |server - offline| over the first request (None when not checked)
    check_diff: float | None


def run_task(task: Task, images: np.ndarray, executor, checker: OfflineExecutor | None) -> TaskResult:
    indices, outputs, unexpected, diff = [], [], 0, None
    for number, request in enumerate(task.requests):
        batch = images[request.images]
        answers, flags = executor.answer(task.entry, task.pattern, batch)
        unexpected += int(np.sum(flags != expected_reconstructed(task.entry.built, task.pattern, len(batch))))
        if checker is not None and number == 0:
            diff = float(np.max(np.abs(answers - checker.answer(task.entry, task.pattern, batch)[0])))
        indices.append(request.images[request.scored])
        outputs.append(answers[request.scored])
    return TaskResult(task.entry.name, task.pattern, np.concatenate(indices), np.concatenate(outputs), unexpected, diff)


@dataclass
class Measurement:
    """One configuration's figures on the test set."""

    entry: dict
    name: str
    available_accuracy: float
    degraded_accuracy: float
    recovery_accuracy: float
    mse: float
    scored: int
    unexpected: int
    check_max_abs_diff: float | None

    @property
    def code(self) -> CodeSpec:
        return CodeSpec.from_dict(self.entry["code"])


def summarize(entry: Entry, results: list[TaskResult], labels: np.ndarray, deployed_logits: np.ndarray) -> Measurement:
    available = [r for r in results if r.pattern == NO_STRAGGLER]
    degraded = [r for r in results if r.pattern != NO_STRAGGLER]
    (available,) = available
    indices = np.concatenate([r.indices for r in degraded])
    outputs = np.concatenate([r.outputs for r in degraded])
    predicted = outputs.argmax(axis=1)
    diffs = [r.check_diff for r in results if r.check_diff is not None]
    return Measurement(
        entry={"arch": entry.arch, "code": entry.code.to_dict(), "stragglers": entry.stragglers},
        name=entry.name,
        available_accuracy=float(np.mean(available.outputs.argmax(axis=1) == labels[available.indices])),
        degraded_accuracy=float(np.mean(predicted == labels[indices])),
        recovery_accuracy=float(np.mean(predicted == deployed_logits[indices].argmax(axis=1))),
        mse=float(np.mean((outputs - deployed_logits[indices]) ** 2)),
        scored=len(indices),
        unexpected=sum(r.unexpected for r in results),
        check_max_abs_diff=max(diffs) if diffs else None,
    )


def measure(
    entries: Sequence[Entry], images: np.ndarray, labels: np.ndarray, executor, grid: TuningGrid,
    max_batch: int, threads: int = 3, checker: OfflineExecutor | None = None,
) -> tuple[dict[str, np.ndarray], list[Measurement]]:
    """Every entry on every image; phases by (architecture, straggler count), one phase's models loaded at
    a time, rounds by unavailable set. Returns the deployed models' own logits and the measurements."""
    tasks = [task for entry in entries for task in plan(entry, len(images), grid, max_batch)]
    deployed: dict[str, np.ndarray] = {}
    results: list[TaskResult] = []
    with ThreadPoolExecutor(threads) as pool:  # one for the whole run: its threads keep their clients
        for arch, stragglers in sorted({(entry.arch, entry.stragglers) for entry in entries}):
            phase = [entry for entry in entries if (entry.arch, entry.stragglers) == (arch, stragglers)]
            names = {entry.name for entry in phase}
            phase_tasks = [task for task in tasks if task.entry.name in names]
            for pattern in sorted({task.pattern for task in phase_tasks}, key=lambda p: (len(p), p)):
                start = time.perf_counter()
                executor.prepare(phase, pattern)
                if arch not in deployed:
                    deployed[arch] = executor.deployed(arch, images)
                round_tasks = [task for task in phase_tasks if task.pattern == pattern]
                results += pool.map(lambda task: run_task(task, images, executor, checker), round_tasks)
                print(f"{arch}, {stragglers} stragglers, unavailable {list(pattern)}: {len(round_tasks)} ensembles, "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    measurements = [summarize(entry, [r for r in results if r.name == entry.name], labels, deployed[entry.arch])
                    for entry in entries]
    return deployed, measurements


def benchmark_repository(entries: Sequence[Entry], onnx_dir: Path, deadline_ms: float,
                         max_batch: int) -> RepositorySpec:
    """Pool workers and parity members (one instance each), and every entry's ensemble with its encoder and decoder."""
    onnx_dir = Path(onnx_dir)
    models: list = []
    for arch in sorted({entry.arch for entry in entries}):
        size = max(entry.pool_size for entry in entries if entry.arch == arch)
        models += [dataclasses.replace(onnx_model(pool_worker(arch, i), onnx_dir / f"{arch}.onnx"), max_batch_size=max_batch)
                   for i in range(size)]
    parities = sorted({entry.parity.name for entry in entries if entry.learned})
    models += [dataclasses.replace(onnx_model(name, onnx_dir / f"{name}.onnx"), max_batch_size=max_batch) for name in parities]
    for entry in entries:
        ensemble = CodedEnsembleSpec(entry.name, entry.code, entry.members(),
                                     *onnx_tensors(onnx_dir / f"{entry.arch}.onnx"), deadline_ms=deadline_ms,
                                     timeout_ms=2 * deadline_ms, max_batch_size=max_batch)
        models += [ensemble, *ensemble.codec_models()]
    # a lost member must cost exactly the queries the offline computation expects
    return pinned(RepositorySpec(tuple(models)))


def live_repository(entries: Sequence[Entry], onnx_dir: Path, work: Path, deadline_ms: float,
                    max_batch: int) -> tuple[Path, Path]:
    """Every model written to ``work/written``, and an empty ``work/live`` for the server to start on:
    ``LiveExecutor`` copies models in as rounds need them."""
    written = write_repository(benchmark_repository(entries, onnx_dir, deadline_ms, max_batch), Path(work) / "written")
    live = Path(work) / "live"
    shutil.rmtree(live, ignore_errors=True)
    live.mkdir(parents=True)
    return written, live


def measurements_to_json(measurements: Iterable[Measurement]) -> list[dict]:
    return [dataclasses.asdict(m) for m in measurements]


def measurements_from_json(data: Iterable[dict]) -> list[Measurement]:
    return [Measurement(**m) for m in data]
