"""Shared fixtures: a prepared phiserve home (keys, example models) and real server processes."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cds.clients import spec_ehr
from tests.server import ServerProcess, prepare_home

pytest_plugins = ["tests.toy_repository"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phiserve home with a dev KEK, dev signing key and both example models, built once."""
    return prepare_home(tmp_path_factory.mktemp("phiserve-home"), REPO_ROOT / "models")


@pytest.fixture
def home(built_home: Path, tmp_path: Path) -> Path:
    """A private copy of the built home that a test may change or break."""
    copy = tmp_path / "home"
    shutil.copytree(built_home, copy)
    return copy


@pytest.fixture(scope="session")
def server(built_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the read-only integration tests (auth and audit on)."""
    home = tmp_path_factory.mktemp("server-home")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    # One trusted CDS Hooks client (the spec's example key), so CDS routes can be walked too.
    ehr = spec_ehr()
    clients = [ehr.client_entry(ehr.write_jwks(home / "cds-client-jwks.json"))]
    with ServerProcess(home, PHISERVE_CDS_CLIENTS=json.dumps(clients)) as proc:
        yield proc


@pytest.fixture
def phiserve_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point in-process settings (CLI calls) at a private home."""
    for key in list(os.environ):
        if key.startswith("PHISERVE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PHISERVE_HOME", str(home))
    return home
