"""Choosing the training-free codes' free parameters on the validation split: the worker point set
(Berrut and NeRCC) and NeRCC's smoothing lambdas, per deployed model and (N, K, S).

A candidate is scored by the degraded-mode accuracy it reaches on validation coding groups under
the benchmark's straggler model (coded_serving.codes.stragglers), ties broken by the lower MSE of the
reconstructed logits against the deployed model's; the test set is never looked at. The deployed
model runs once per encoder (point set, lambda_enc); decoders are cheap matrices tried on the same
outputs. Results are cached per deployed model (its ONNX digest) and grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime

from coded_serving.codes import Code, CodeSpec, make_code
from coded_serving.codes.stragglers import available_mask, missing_slots, straggler_patterns

Predict = Callable[[np.ndarray], np.ndarray]
FAMILIES = ("berrut", "nercc")


@dataclass(frozen=True)
class CurveCase:
    """A training-free code to tune: ``family`` over N = k + stragglers workers."""

    family: str
    k: int
    stragglers: int
    systematic: bool

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; known: {FAMILIES}")

    @property
    def num_workers(self) -> int:
        return self.k + self.stragglers

    @property
    def key(self) -> str:
        return f"{self.family}{'-systematic' if self.systematic else ''}-k{self.k}-s{self.stragglers}"


@dataclass(frozen=True)
class TuningGrid:
    point_sets: tuple[str, ...] = ("approxifer", "chebyshev1", "chebyshev2", "midpoints")
    # NeRCC's useful lambdas are small: the nodes lie in [-1, 1], about 2/K apart (docs/codes.md's 1/n scaling)
    lambdas_enc: tuple[float, ...] = (0.0, 3e-6, 1e-5, 3e-5)
    lambdas_dec: tuple[float, ...] = (0.0, 1e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4)
    #: straggler subsets per (N, S) for S >= 2; the benchmark must use the same number
    subsets: int = 5
    seed: int = 0


@dataclass(frozen=True)
class Score:
    degraded_accuracy: float
    recovery_accuracy: float
    mse: float

    def rank(self) -> tuple[float, float]:
        return (-self.degraded_accuracy, self.mse)


@dataclass(frozen=True)
class Tuned:
    case: CurveCase
    code: CodeSpec
    score: Score
    #: the best candidate of each point set, and of each NeRCC lambda_dec (what the choice rests on)
    by_point_set: dict[str, Score]
    by_lambda_dec: dict[str, Score] = field(default_factory=dict)
    #: time it took to tune (the deployed model's runs on validation data included)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "case": dataclasses.asdict(self.case),
            "code": self.code.to_dict(),
            "score": dataclasses.asdict(self.score),
            "by_point_set": {name: dataclasses.asdict(score) for name, score in self.by_point_set.items()},
            "by_lambda_dec": {name: dataclasses.asdict(score) for name, score in self.by_lambda_dec.items()},
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Tuned":
        return cls(
            CurveCase(**data["case"]), CodeSpec.from_dict(data["code"]), Score(**data["score"]),
            {name: Score(**score) for name, score in data["by_point_set"].items()},
            {name: Score(**score) for name, score in data["by_lambda_dec"].items()},
            data["seconds"],
        )


def worker_results(code: Code, predict: Predict, grouped: np.ndarray, deployed_logits: np.ndarray) -> np.ndarray:
    """[G, N, out]: every worker's answer for the coding groups ``grouped`` [G, k, *in]."""
    coded = code.encode(grouped)
    outputs = predict(coded.reshape(-1, *grouped.shape[2:])).reshape(len(grouped), code.num_coded, -1)
    return np.concatenate([deployed_logits, outputs], axis=1) if code.systematic else outputs


def score(code: Code, results: np.ndarray, labels: np.ndarray, deployed_logits: np.ndarray, patterns) -> Score:
    """Pooled over the patterns: each missing original of each group counts once."""
    correct = agree = squared = count = 0.0
    for pattern in patterns:
        slots = missing_slots(code, pattern)
        if not len(slots):
            continue
        estimates = code.decode(results, available_mask(code, pattern))[:, slots]
        predicted = estimates.argmax(axis=-1)
        correct += np.sum(predicted == labels[:, slots])
        agree += np.sum(predicted == deployed_logits[:, slots].argmax(axis=-1))
        squared += np.sum(np.mean((estimates - deployed_logits[:, slots]) ** 2, axis=-1))
        count += predicted.size
    return Score(correct / count, agree / count, squared / count)


def _candidates(case: CurveCase, grid: TuningGrid) -> Iterator[tuple[str, list[CodeSpec]]]:
    """(point set, specs sharing one encoder): the deployed model runs once per group of specs."""
    base = {"num_workers": case.num_workers, "systematic": case.systematic}
    for points in grid.point_sets:
        if case.family == "berrut":
            yield points, [CodeSpec("berrut", case.k, base | {"worker_points": points})]
            continue
        for lambda_enc in grid.lambdas_enc:
            yield points, [
                CodeSpec("nercc", case.k,
                         base | {"worker_points": points, "lambda_enc": lambda_enc, "lambda_dec": lambda_dec})
                for lambda_dec in grid.lambdas_dec
            ]


def tune(case: CurveCase, predict: Predict, images: np.ndarray, labels: np.ndarray, grid: TuningGrid) -> Tuned:
    start = time.perf_counter()
    groups = len(labels) // case.k
    grouped = images[: groups * case.k].reshape(groups, case.k, *images.shape[1:])
    grouped_labels = labels[: groups * case.k].reshape(groups, case.k)
    deployed_logits = predict(images[: groups * case.k]).reshape(groups, case.k, -1)
    patterns = straggler_patterns(case.num_workers, case.stragglers, grid.subsets, grid.seed)
    best: dict[str, tuple[Score, CodeSpec]] = {}
    by_lambda_dec: dict[str, Score] = {}
    for points, specs in _candidates(case, grid):
        try:
            codes = [make_code(spec) for spec in specs]
        except ValueError:  # a point set this case cannot use (e.g. coded points on the data points)
            continue
        results = worker_results(codes[0], predict, grouped, deployed_logits)
        for spec, code in zip(specs, codes):
            found = score(code, results, grouped_labels, deployed_logits, patterns)
            if points not in best or found.rank() < best[points][0].rank():
                best[points] = (found, spec)
            if "lambda_dec" in spec.params:
                key = f"{spec.params['lambda_dec']:g}"
                if key not in by_lambda_dec or found.rank() < by_lambda_dec[key].rank():
                    by_lambda_dec[key] = found
    if not best:
        raise ValueError(f"no valid candidate for {case}")
    chosen_score, chosen = min(best.values(), key=lambda item: item[0].rank())
    return Tuned(case, chosen, chosen_score, {points: found for points, (found, _) in best.items()}, by_lambda_dec,
                 round(time.perf_counter() - start, 1))


def onnx_predict(path: Path, threads: int = 1, batch_size: int = 4096) -> Predict:
    """The ONNX model Triton serves, run in this process (what a member computes, without the server)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (input_name,), (output_name,) = [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]

    def predict(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = [session.run([output_name], {input_name: batch[i:i + batch_size]})[0]
                 for i in range(0, len(batch), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    return predict


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tune_cases(
    arch: str, cases: Iterable[CurveCase], predict: Predict, images: np.ndarray, labels: np.ndarray,
    grid: TuningGrid, cache: Path, fingerprint: str,
) -> dict[str, Tuned]:
    """Tune every case for one deployed model, reusing ``cache`` entries made for the same model and grid."""
    cache = Path(cache)
    stored = json.loads(cache.read_text()) if cache.exists() else {}
    # through JSON, so tuples compare equal to the lists read back
    identity = {"fingerprint": fingerprint, "grid": dataclasses.asdict(grid), "val_size": len(labels)}
    identity = json.loads(json.dumps(identity))
    mine = stored.get(arch, {})
    cases = list(cases)
    reusable = mine.get("cases", {}) if mine.get("identity") == identity else {}
    tuned = {key: Tuned.from_dict(value) for key, value in reusable.items()}
    for case in cases:
        if case.key in tuned:
            continue
        tuned[case.key] = tune(case, predict, images, labels, grid)
        found = tuned[case.key]
        print(f"tuned {arch} {case.key}: {found.code.params} val degraded {found.score.degraded_accuracy:.4f}",
              file=sys.stderr, flush=True)
        stored[arch] = {"identity": identity, "cases": {key: value.to_dict() for key, value in tuned.items()}}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(stored, indent=1) + "\n")
    return {case.key: tuned[case.key] for case in cases}
