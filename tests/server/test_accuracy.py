"""The accuracy benchmark on a tiny grid: tiny models trained in seconds, a real tritonserver whose
answers must equal the offline computation (the codes' encode/decode around onnxruntime), the plan
that scores every test image once, tuning, the report writer, and the user-model export path."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from coded_serving.benchmarks.accuracy import (
    NO_STRAGGLER, AccuracyGrid, Entry, LiveExecutor, OfflineExecutor, live_repository, measure,
    plan, train_grid, tune_grid,
)
from coded_serving.benchmarks.accuracy_report import SECTION_BUILDERS, ReportInputs, RunInfo, preamble
from coded_serving.client import ModelClient
from coded_serving.codes import CodeSpec, make_code
from coded_serving.training.data import Dataset, load_fashion_mnist
from coded_serving.training.pipeline import TrainingPlan, read_manifest, train_models
from coded_serving.deployment.launcher import PROJECT_ROOT, ServerConfig, TritonServer, free_port
from coded_serving.training.onnx_export import export_onnx
from coded_serving.benchmarks.report_sections import ReportSection, read_sections, update_report
from coded_serving.codes.stragglers import missing_slots, straggler_patterns
from coded_serving.training.tuning import CurveCase, TuningGrid, onnx_predict, tune, tune_cases

torch.set_num_threads(2)

TINY_TUNING = TuningGrid(point_sets=("approxifer", "chebyshev1"), lambdas_enc=(0.0, 1e-5), lambdas_dec=(0.0, 1e-5),
                         subsets=2)
TINY_GRID = AccuracyGrid(archs=("mlp",), parm=(("parm-addition", 2), ("parm-concatenation", 2)), ks=(2, 3),
                         stragglers=(1, 2), tuning=TINY_TUNING)
TINY_PLAN = TrainingPlan(deployed_epochs=(("mlp", 1),), parity_epochs_per_k=1, max_parity_epochs=1)
MAX_BATCH = 64


@pytest.fixture(scope="module")
def small() -> Dataset:
    data = load_fashion_mnist()
    return Dataset(data.train.take(2000), data.val.take(300), data.test.take(120))


@pytest.fixture(scope="module")
def built(small, tmp_path_factory):
    """The tiny grid trained, exported and tuned: (models folder, manifest, tuned codes)."""
    out = tmp_path_factory.mktemp("accuracy")
    records = train_grid(TINY_GRID, TINY_PLAN, small, out / "models")
    tuned = tune_grid(TINY_GRID, small, out / "models", out / "tuning.json")
    return out, records, tuned


def test_straggler_patterns_are_seeded_distinct_and_shared():
    assert straggler_patterns(4, 1, subsets=2, seed=0) == ((0,), (1,), (2,), (3,))
    assert straggler_patterns(4, 3, subsets=5, seed=0) == ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3))
    drawn = straggler_patterns(12, 3, subsets=5, seed=0)
    assert len(set(drawn)) == 5 and drawn == straggler_patterns(12, 3, subsets=5, seed=0)
    assert drawn != straggler_patterns(12, 3, subsets=5, seed=1)


@pytest.mark.parametrize("code", [
    CodeSpec("parm-addition", 3), CodeSpec("berrut", 4, {"num_workers": 6}),
    CodeSpec("nercc", 3, {"num_workers": 5, "systematic": True, "lambda_enc": 0.0, "lambda_dec": 0.0}),
])
def test_plan_scores_every_test_image_once_in_a_missing_slot(code):
    entry = Entry("mlp", code, 2 if code.kind != "parm-addition" else 1)
    tasks = plan(entry, 100, TuningGrid(subsets=3), max_batch=16)
    built_code = make_code(code)
    for task in tasks:
        for request in task.requests:
            assert len(request.images) % code.k == 0 and len(request.images) <= 16
            slots = np.zeros((len(request.images) // code.k, code.k), bool)
            slots[:, missing_slots(built_code, task.pattern) if task.pattern else np.arange(code.k)] = True
            assert not (request.scored & ~slots.ravel()).any()  # only missing slots are scored
    for degraded in (False, True):
        scored = np.concatenate([r.images[r.scored] for t in tasks if (t.pattern != NO_STRAGGLER) == degraded
                                 for r in t.requests])
        assert sorted(scored) == list(range(100))


def test_live_server_answers_equal_the_offline_computation(small, built):
    """ParM, Berrut, NeRCC and systematic variants with stragglers made by unloading members."""
    out, _, tuned = built
    entries = [e for e in TINY_GRID.entries(tuned) if e.learned or (e.code.k, e.stragglers) in ((2, 1), (3, 2))]
    test = small.test
    offline = OfflineExecutor(out / "models")
    _, expected = measure(entries, test.images, test.labels, offline, TINY_TUNING, MAX_BATCH)
    written, live = live_repository(entries, out / "models", out / "repository", 3000.0, MAX_BATCH)
    config = ServerConfig(live, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(config, out / "server.log"):
        executor = LiveExecutor(config.http_url, written, live)
        deployed, measured = measure(entries, test.images, test.labels, executor, TINY_TUNING, MAX_BATCH,
                                     checker=offline)
    np.testing.assert_allclose(deployed["mlp"], offline.deployed("mlp", test.images), atol=1e-5)
    for live_figures, offline_figures in zip(measured, expected):
        assert live_figures.name == offline_figures.name
        assert live_figures.unexpected == 0 and live_figures.check_max_abs_diff <= 1e-5
        assert live_figures.scored == len(test.labels)
        for field in ("available_accuracy", "degraded_accuracy", "recovery_accuracy"):
            assert getattr(live_figures, field) == getattr(offline_figures, field), (live_figures.name, field)
        assert live_figures.mse == pytest.approx(offline_figures.mse, rel=1e-5)
    parm = next(m for m in measured if m.name == "mlp_parm_addition_k2")
    assert parm.available_accuracy > parm.degraded_accuracy  # a reconstruction, not the original

    records = read_manifest(out / "models")
    run = RunInfo("2000-01-01 00:00", "test", 1.0, {"serving": 1.0}, 2000, 300, len(test.labels), MAX_BATCH, 3000.0, 3)
    inputs = ReportInputs(run, TINY_GRID, records, tuned, measured)
    report = out / "accuracy.md"
    update_report(report, [build(inputs) for build in SECTION_BUILDERS], preamble(inputs))
    text = report.read_text()
    assert text.splitlines()[0].endswith("`.venv/bin/python export/benchmark_accuracy.py`")
    assert "| MLP 784-200-100-10 | addition | 2 | 50% |" in text and "max |server - offline|" in text


def test_tuning_keeps_the_best_candidate_and_caches_it(small, built, tmp_path):
    out, _, _ = built
    predict = onnx_predict(out / "models" / "mlp.onnx")
    calls = []

    def counting(images):
        calls.append(len(images))
        return predict(images)

    case = CurveCase("nercc", 3, 1, False)
    found = tune(case, counting, small.val.images, small.val.labels, TINY_TUNING)
    assert found.score == max(found.by_point_set.values(), key=lambda s: (s.degraded_accuracy, -s.mse))
    assert found.code.params["worker_points"] in TINY_TUNING.point_sets
    cache = tmp_path / "tuning.json"
    first = tune_cases("mlp", [case], counting, small.val.images, small.val.labels, TINY_TUNING, cache, "digest")
    before = len(calls)
    again = tune_cases("mlp", [case], counting, small.val.images, small.val.labels, TINY_TUNING, cache, "digest")
    assert len(calls) == before and again[case.key].code == first[case.key].code
    tune_cases("mlp", [case], counting, small.val.images, small.val.labels, TINY_TUNING, cache, "another model")
    assert len(calls) > before


def test_report_sections_of_other_benchmarks_survive(tmp_path):
    report = tmp_path / "accuracy.md"
    update_report(report, [ReportSection("parm", 20, "## ParM\nold\n")], "# Title `command`\n")
    update_report(report, [ReportSection("coded-invnet", 50, "## Coded-InvNet\n")])
    update_report(report, [ReportSection("parm", 20, "## ParM\nnew\n"), ReportSection("goals", 60, "## Goals\n")],
                  "# Title `command`\n")
    text = report.read_text()
    assert text.startswith("# Title `command`\n")
    assert [s.key for s in read_sections(text)] == ["parm", "coded-invnet", "goals"]
    assert "new" in text and "old" not in text


def test_user_onnx_model_gets_a_parity_model_and_a_serving_repository(small, tmp_path):
    """A user's ONNX classifier with its own tensor names, and training images as .npy."""
    torch.manual_seed(0)
    user = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    export_onnx(user, tmp_path / "user.onnx", input_name="pixels", output_name="scores")
    np.save(tmp_path / "train.npy", small.train.images[:600])
    repository = tmp_path / "repository"
    subprocess.run([
        sys.executable, str(PROJECT_ROOT / "export" / "export_model.py"), "--deployed", str(tmp_path / "user.onnx"),
        "--images", str(tmp_path / "train.npy"), "--code", "parm-addition", "--k", "2", "--parity-arch", "mlp",
        "--parity-epochs", "1", "--deadline-ms", "3000", "--accelerator", "tensorrt", "--out", str(tmp_path / "out"),
        "--repository", str(repository),
    ], check=True, capture_output=True)
    assert 'name: "tensorrt"' in (repository / "user_parm_member_0" / "config.pbtxt").read_text()
    config = ServerConfig(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(config, tmp_path / "server.log"):
        with ModelClient(config.http_url, "user_parm") as coded, ModelClient(config.http_url, "user") as direct:
            assert coded.input["name"] == "pixels" and coded.output == "scores"
            batch = small.test.images[:8]
            got, want = coded.infer(batch), direct.infer(batch)
    np.testing.assert_allclose(got.outputs, want.outputs, atol=1e-5)
    assert not got.reconstructed.any()


def test_finished_checkpoints_of_another_build_are_adopted_only_when_they_match(small, built, tmp_path):
    out, records, _ = built
    parity = [p for p in TINY_GRID.parity_models() if p.kind == "parm-addition"]
    adopted = train_models(["mlp"], parity, TINY_PLAN, small, tmp_path / "same", adopt=out / "models" / "checkpoints")
    assert all(adopted[name].reused_from and adopted[name].train_seconds == 0 for name in ("mlp", parity[0].name))
    assert adopted["mlp"].val == records["mlp"].val
    other_seed = dataclasses.replace(TINY_PLAN, seed=1)
    retrained = train_models(["mlp"], [], other_seed, small, tmp_path / "other", adopt=out / "models" / "checkpoints")
    assert retrained["mlp"].reused_from is None
    assert torch.load(tmp_path / "other" / "checkpoints" / "mlp.pt", weights_only=True)["identity"]["seed"] == 1
