"""pytest plugin for CI's runs on the other supported Pythons (3.12, 3.13; see .ci/run).

Those venvs carry the export extra but torch: it pins torch==2.13.0, whose only build for 3.12
and 3.13 on PyPI is a CUDA one of several GB, so the export tests and every test that needs all
the example models (``built_home`` runs their export scripts, torch's included) are left to the
Python 3.11 run of ``make test``. Everything else that is not marked slow runs, the tabular
example model's export (scikit-learn, skl2onnx) included.

    python -m pytest -p tools.pytest_other_pythons -m "not slow"
"""

from __future__ import annotations

from pathlib import Path

import pytest

NEEDS_EXPORT = {"built_home"}  # fixtures whose setup runs models/*/export.py
EXPORT_TESTS = Path(__file__).resolve().parents[1] / "tests" / "export"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    return True if collection_path == EXPORT_TESTS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept = [i for i in items if not NEEDS_EXPORT & set(getattr(i, "fixturenames", ()))]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
