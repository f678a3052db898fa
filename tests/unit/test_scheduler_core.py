"""The C++ scheduler's Triton-free core, compiled with g++ and run case by case
(tests/unit/scheduler_core_test.cc): its decisions tested without a server."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from coded_serving import scheduler

TEST_SOURCE = Path(__file__).with_name("scheduler_core_test.cc")
#: the files that must build without Triton's API
CORE = ("core.cc", "config.cc", "json.cc", "fastpath.cc")
CASES = re.findall(r"^TEST\((\w+)\)", TEST_SOURCE.read_text(), re.MULTILINE)


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("scheduler_core") / "scheduler_core_test"
    command = ["g++", "-O1", "-std=c++17", "-Wall", "-Werror", "-I", str(scheduler.SOURCE_DIR), "-o", str(output),
               str(TEST_SOURCE), *(str(scheduler.SOURCE_DIR / name) for name in CORE)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return output


def test_the_core_does_not_include_triton():
    for name in CORE:
        for header in re.findall(r'#include "([^"]+)"', (scheduler.SOURCE_DIR / name).read_text()):
            text = (scheduler.SOURCE_DIR / header).read_text()
            assert "triton" not in header and "TRITON" not in text, f"{name} includes {header}"


@pytest.mark.parametrize("case", CASES)
def test_scheduler_core(binary, case):
    result = subprocess.run([str(binary), case], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.split() == [case], result.stderr


def test_compile_backend_builds_the_library(tmp_path):
    library = scheduler.compile_backend(tmp_path)
    assert library == tmp_path / "libtriton_coded_ensemble.so" and library.stat().st_size > 0
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    for entry in ("TRITONBACKEND_Initialize", "TRITONBACKEND_ModelInitialize", "TRITONBACKEND_ModelInstanceExecute"):
        assert entry in symbols
