"""Version policy: latest by default, pinned per model by settings; every version addressable."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.errors import ConfigurationError
from phiserve.export import ExportedModel
from phiserve.repository.policy import default_version
from phiserve.repository.publish import publish
from phiserve.repository.store import ModelRepository
from tests.server import ServerProcess

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.5] * 30}]}


def test_latest_unless_pinned() -> None:
    assert default_version("m", [1, 2, 3], {}) == 3
    assert default_version("m", [1, 2, 3], {"m": 2}) == 2
    assert default_version("m", [1, 2, 3], {"other": 1}) == 3
    with pytest.raises(ConfigurationError, match="pinned to version 9"):
        default_version("m", [1, 2], {"m": 9})


def _publish_v2(home: Path) -> None:
    settings = Settings(home=home)
    repo, provider = ModelRepository(settings.repository_dir), key_provider_from_settings(settings)
    a = repo.load("breast-cancer", 1, provider)
    m = a.manifest
    publish(
        repo, ExportedModel(m.name, a.onnx_bytes, m.parity, m.metrics, m.card, m.serving), provider
    )


@pytest.mark.parametrize(("pin", "expected"), [(None, "2"), ('{"breast-cancer": 1}', "1")])
def test_server_follows_the_policy_and_serves_every_version(
    home: Path, pin: str | None, expected: str
) -> None:
    _publish_v2(home)
    env = {"PHISERVE_PINNED_VERSIONS": pin} if pin else {}
    with ServerProcess(home, **env) as server:
        url = f"{server.url}/v2/models/breast-cancer"
        assert (
            httpx.post(f"{url}/infer", json=BODY, headers=server.auth).json()["model_version"]
            == expected
        )
        for version in ("1", "2"):
            doc = httpx.post(
                f"{url}/versions/{version}/infer", json=BODY, headers=server.auth
            ).json()
            assert doc["model_version"] == version
        meta = httpx.get(url, headers=server.auth).json()
        assert meta["versions"] == ["1", "2"]
        assert meta["parameters"]["default_version"] == int(expected)


def test_pin_to_a_missing_version_is_not_ready_with_the_cause(home: Path) -> None:
    with ServerProcess(
        home, wait_ready=False, PHISERVE_PINNED_VERSIONS='{"breast-cancer": 7}'
    ) as server:
        ready = server.wait_for_readiness(lambda r: "failures" in r.json())
        assert ready.status_code == 503
        assert "pinned to version 7" in ready.json()["failures"][0]["cause"]
