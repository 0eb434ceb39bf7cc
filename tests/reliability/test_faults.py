"""Dependency faults with real processes: the key provider down at start and during rotation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.crypto.vault_transit import VaultTransitKeyProvider
from phiserve.export import ExportedModel
from phiserve.repository.publish import publish
from phiserve.repository.store import ModelRepository
from tests.crypto.vault_transit_stub import VaultTransitStub
from tests.server import ServerProcess, run_cli

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.4] * 30}]}


@pytest.fixture
def vault() -> Iterator[VaultTransitStub]:
    with VaultTransitStub() as stub:
        yield stub


@pytest.fixture
def vault_home(home: Path, vault: VaultTransitStub) -> tuple[Path, dict[str, str]]:
    """``home`` with breast-cancer re-published under Vault transit (and no local models)."""
    local = Settings(home=home)
    source = ModelRepository(local.repository_dir)
    artifact = source.load("breast-cancer", 1, key_provider_from_settings(local))
    m = artifact.manifest
    exported = ExportedModel(m.name, artifact.onnx_bytes, m.parity, m.metrics, m.card, m.serving)
    env = {
        "PHISERVE_KEY_PROVIDER": "vault-transit",
        "PHISERVE_VAULT_ADDR": vault.url,
        "PHISERVE_VAULT_TOKEN": vault.token,
        "PHISERVE_MODEL_REPOSITORY": str(home / "vault-models"),
    }
    provider = VaultTransitKeyProvider(vault.url, vault.token, key="phiserve")
    publish(ModelRepository(home / "vault-models"), exported, provider)
    return home, env


def test_key_provider_down_at_start_then_back(
    vault_home: tuple[Path, dict[str, str]], vault: VaultTransitStub
) -> None:
    home, env = vault_home
    vault.sealed = True
    with ServerProcess(home, wait_ready=False, **env) as server:
        body = server.wait_for_readiness(lambda r: "failures" in r.json()).json()
        (failure,) = body["failures"]
        assert failure["model"] == "breast-cancer"
        assert "Vault" in failure["cause"] or "vault" in failure["cause"], failure
        assert body["unavailable"] == ["audit trail"]
        assert server.proc.poll() is None
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
        vault.sealed = False  # the provider comes back: no restart needed
        assert server.wait_for_readiness(lambda r: r.status_code == 200).json() == {"ready": True}
        response = httpx.post(
            f"{server.url}/v2/models/breast-cancer/infer", json=BODY, headers=server.auth
        )
        assert response.status_code == 200
    assert "Traceback" not in server.log()


def test_rotation_with_provider_down_fails_cleanly_and_loses_nothing(
    vault_home: tuple[Path, dict[str, str]], vault: VaultTransitStub
) -> None:
    home, env = vault_home
    vault.sealed = True
    failed = run_cli(home, "keys", "rotate", check=False, **env)
    assert failed.returncode == 2
    assert failed.stderr.startswith("phiserve: error:")
    assert "Traceback" not in failed.stderr
    vault.sealed = False
    assert "1 of 1 versions verified" in run_cli(home, "models", "verify", **env).stdout
    rotated = run_cli(home, "keys", "rotate", **env)
    assert "re-wrapped 1 model versions" in rotated.stdout
    assert "1 of 1 versions verified" in run_cli(home, "models", "verify", **env).stdout
