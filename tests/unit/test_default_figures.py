"""The shipped default's measured figures (reports/default_models.json), the compute counts behind every
report's overhead columns, and the report rewriting that adds them (no server)."""

from __future__ import annotations

import json

import pytest

from coded_serving.benchmarks.accuracy_report import (
    add_overhead_columns, equal_compute_rows, figures_from_markdown,
)
from coded_serving.benchmarks.compute import arch_macs, code_overhead, onnx_macs
from coded_serving.benchmarks.report_sections import ReportSection
from coded_serving.codes import CodeSpec
from coded_serving.deployment.builder import DEFAULT_NERCC
from coded_serving.deployment.launcher import DEFAULT_REPOSITORY, PROJECT_ROOT
from coded_serving.specs import CodedEnsembleSpec

FIGURES = PROJECT_ROOT / "reports" / "default_models.json"
#: LeNet-5 by hand: conv 6x(1x5x5) on 28x28, conv 16x(6x5x5) on 10x10, dense 400-120-84-10
LENET5_MACS = 6 * 25 * 28 * 28 + 16 * 6 * 25 * 10 * 10 + 400 * 120 + 120 * 84 + 84 * 10


def test_macs_are_counted_from_the_onnx_graph():
    assert onnx_macs(DEFAULT_REPOSITORY / "lenet5" / "1" / "model.onnx") == LENET5_MACS
    assert arch_macs("lenet5") == LENET5_MACS and arch_macs("mlp") == 784 * 200 + 200 * 100 + 100 * 10


def test_overheads_in_workers_and_macs():
    parm = code_overhead(CodeSpec("parm-addition", 2), LENET5_MACS)
    assert parm.extra_workers_per_query == 0.5 and parm.model_macs == LENET5_MACS / 2
    assert parm.codec_macs == (2 * 784 + 10) / 2
    nercc = code_overhead(DEFAULT_NERCC, LENET5_MACS)
    assert nercc.extra_workers_per_query == 1 / 8 and nercc.model_macs == LENET5_MACS / 8
    assert nercc.codec_macs == (9 * 8 * 784 + 8 * 8 * 10) / 8  # a 9 x 8 encoder on the images, 8 x 8 decoder
    bigger = code_overhead(CodeSpec("parm-addition", 2), LENET5_MACS, coded_macs=10 * LENET5_MACS)
    assert bigger.extra_workers_per_query == 0.5 and bigger.relative > 5  # workers alone hide a heavy parity


def test_every_shipped_ensemble_has_measured_figures():
    figures = json.loads(FIGURES.read_text())
    shipped = {p.parent.name for p in DEFAULT_REPOSITORY.glob("*/config.pbtxt")
               if 'backend: "coded_ensemble"' in p.read_text()}
    assert shipped == set(figures["codes"])
    for name, entry in figures["codes"].items():
        test = entry["test"]
        assert 0.5 < test["degraded_accuracy"] <= test["available_accuracy"] <= 1, name
        assert entry["overhead"]["redundant_macs_per_query"] > 0
    assert figures["codes"]["lenet5_nercc"]["code"] == DEFAULT_NERCC.to_dict()
    assert figures["deployed"]["macs_per_query"] == LENET5_MACS


def test_query_client_prints_the_measured_figures():
    import importlib.util

    spec = importlib.util.spec_from_file_location("query", PROJECT_ROOT / "client" / "query.py")
    query = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(query)
    text = query.describe("lenet5_nercc", FIGURES)
    degraded = json.loads(FIGURES.read_text())["codes"]["lenet5_nercc"]["test"]["degraded_accuracy"]
    assert f"degraded-mode accuracy {degraded:.3f}" in text and "9 workers" in text and "MACs" in text
    assert query.describe("lenet5", FIGURES) is None


REPORT = """<!-- section parm order 20 -->
| deployed | encoder | k | overhead | available | degraded | recovery | val degraded | published ParM |
|---|---|---|---|---|---|---|---|---|
| LeNet-5 | addition | 8 | 12% | 0.893 | 0.546 | 0.554 | 0.545 | 0.671 |
| deployed | K | S | N | Berrut | NeRCC | Berrut systematic | NeRCC systematic | Berrut, none missing | NeRCC, none missing |
|---|---|---|---|---|---|---|---|---|---|
| LeNet-5 | 8 | 1 | 9 | 0.767 | 0.785 | 0.199 | 0.208 | 0.837 | 0.855 |
<!-- end section parm -->
"""


def test_report_tables_get_overhead_columns_and_an_equal_compute_comparison():
    figures = figures_from_markdown(REPORT)
    assert figures[("lenet5", "parm-addition", False, 8, 1)] == 0.546
    assert figures[("lenet5", "nercc", False, 8, 1)] == 0.785
    rows, names = equal_compute_rows(figures, "lenet5")
    (row,) = rows
    assert row[1] == "1/8" and "**0.785** (K=8, S=1)" in row and "0.546 (k=8)" in row
    section = add_overhead_columns(ReportSection("parm", 20, REPORT.split("\n", 1)[1].rsplit("<!--", 1)[0]))
    assert "| LeNet-5 | addition | 8 | 12% | 52.9 k (0.13x) | 0.893 |" in section.markdown
    assert "| LeNet-5 | 8 | 1 | 9 | 0.125 | 59.2 k / 52.9 k (0.12x) | 0.767 |" in section.markdown
    again = add_overhead_columns(section)  # idempotent: the columns are refreshed, not added twice
    assert again.markdown == section.markdown


def test_the_shipped_spec_serves_every_code_beside_the_deployed_model():
    from coded_serving.deployment.builder import default_repository_spec, onnx_files_of_default_repository
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as scratch:
        spec = default_repository_spec(onnx_files_of_default_repository(DEFAULT_REPOSITORY, Path(scratch)))
    ensembles = {m.name: m for m in spec.models if isinstance(m, CodedEnsembleSpec)}
    assert set(ensembles) == {"lenet5_parm", "lenet5_nercc", "iresnet_invnet"}
    assert len(ensembles["lenet5_nercc"].members) == 9 and ensembles["lenet5_nercc"].code == DEFAULT_NERCC
    invnet = ensembles["iresnet_invnet"]
    assert invnet.code.kind == "coded-invnet" and invnet.code.k == 4 and len(invnet.members) == 5
    assert invnet.output.name == "logits" and invnet.output.dims == (10,)  # the decoder applies the head


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
