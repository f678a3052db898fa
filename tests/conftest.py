"""Every test is marked by its folder: ``unit`` (pure logic, no server) or ``server`` (the real
tritonserver on loopback), so ``pytest -m unit`` runs in seconds."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        folder = Path(item.fspath).relative_to(HERE).parts[0]
        if folder in ("unit", "server"):
            item.add_marker(getattr(pytest.mark, folder))
