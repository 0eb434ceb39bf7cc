"""Settings: one class, environment prefix PHISERVE_, clear errors that never echo values."""

from __future__ import annotations

import os

import pytest

from phiserve.config import load_settings
from phiserve.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PHISERVE_"):
            monkeypatch.delenv(key)


def test_defaults_and_derived_paths(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PHISERVE_HOME", str(tmp_path))
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 3000)
    assert settings.repository_dir == tmp_path / "models"
    assert settings.kek_file == tmp_path / "keys" / "kek.json"
    assert settings.audit_path == tmp_path / "audit"


def test_nested_and_json_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHISERVE_BATCHING__MAX_BATCH_SIZE", "8")
    monkeypatch.setenv(
        "PHISERVE_MODEL_BATCHING", '{"chest-xray": {"max_batch_size": 4, "max_queue_delay_ms": 5}}'
    )
    monkeypatch.setenv("PHISERVE_PINNED_VERSIONS", '{"breast-cancer": 1}')
    monkeypatch.setenv("PHISERVE_GC_THRESHOLDS", "[700, 10, 10]")
    settings = load_settings()
    assert settings.gc_thresholds == (700, 10, 10)
    assert settings.batching_for("breast-cancer").max_batch_size == 8
    assert settings.batching_for("chest-xray").max_queue_delay_ms == 5
    assert settings.pinned_versions == {"breast-cancer": 1}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PHISERVE_PORT": "CANARY-PHI-123"}, "PHISERVE_PORT: Input should be a valid integer"),
        ({"PHISERVE_PORT": "70000"}, "PHISERVE_PORT"),
        ({"PHISERVE_BATCHING__MAX_BATCH_SIZE": "0"}, "PHISERVE_BATCHING__MAX_BATCH_SIZE"),
        ({"PHISERVE_KEY_PROVIDER": "aws-kms"}, "needs PHISERVE_AWS_KMS_KEY_ID"),
        ({"PHISERVE_KEY_PROVIDER": "vault-transit"}, "needs PHISERVE_VAULT_ADDR"),
        ({"PHISERVE_TLS_CERT_FILE": "/x.pem"}, "must be set together"),
        ({"PHISERVE_JWT_ALGORITHMS": '["HS256"]'}, "unsupported JWT algorithms"),
        ({"PHISERVE_BOGUS_SETTING": "1"}, "unknown settings ['PHISERVE_BOGUS_SETTING']"),
        ({"PHISERVE_KEY_PROVIDER": "CANARY-PHI-123"}, "PHISERVE_KEY_PROVIDER"),
        ({"PHISERVE_GC_THRESHOLDS": "[0, 10, 10]"}, "PHISERVE_GC_THRESHOLDS"),
        ({"PHISERVE_GC_THRESHOLDS": "[50000, 20]"}, "PHISERVE_GC_THRESHOLDS"),
    ],
)
def test_bad_settings_are_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, env: dict, message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert message in info.value.message
    assert "CANARY" not in info.value.message


def test_client_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHISERVE_TOKEN", "abc")
    assert load_settings().port == 3000
