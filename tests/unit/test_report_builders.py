"""The accuracy report's section builders with the overhead columns, on a tiny made-up run (no server)."""

from __future__ import annotations

from coded_serving.benchmarks.accuracy import AccuracyGrid, Measurement
from coded_serving.benchmarks.accuracy_report import SECTION_BUILDERS, ReportInputs, RunInfo
from coded_serving.codes import CodeSpec


def measurement(kind: str, k: int, degraded: float, params: dict | None = None) -> Measurement:
    code = CodeSpec(kind, k, params or {})
    return Measurement({"arch": "mlp", "code": code.to_dict(), "stragglers": 1}, f"mlp_{kind}_k{k}", 0.886, degraded,
                       0.9, 1.0, 100, 0, 0.0)


def test_a_full_run_writes_overheads_in_every_table_and_the_compute_section():
    grid = AccuracyGrid(archs=("mlp",), parm=(("parm-addition", 2),), ks=(2,), stragglers=(1,), systematic=(False,))
    curve = {"num_workers": 3, "worker_points": "approxifer"}
    measurements = [measurement("parm-addition", 2, 0.817), measurement("berrut", 2, 0.782, curve),
                    measurement("nercc", 2, 0.783, curve | {"lambda_enc": 0.0, "lambda_dec": 0.0})]
    run = RunInfo("2000-01-01 00:00", "test", 1.0, {"serving": 1.0}, 100, 10, 100, 64, 3000.0, 3)
    sections = {s.key: s.markdown for s in (build(ReportInputs(run, grid, {}, {}, measurements))
                                            for build in SECTION_BUILDERS)}
    assert "| MLP 784-200-100-10 | addition | 2 | 50% | 89.7 k (0.50x) |" in sections["parm"]
    assert "| MLP 784-200-100-10 | 2 | 3 | 0.5 | 89.7 k / 91.3 k / 89.7 k (0.50x) |" in sections["training-free"]
    compute = sections["compute"]
    assert "| MLP 784-200-100-10 | 1/2 | 88.9 k | **0.817** (k=2) |" in compute
    assert "What differs" in compute or "what differs" in compute
