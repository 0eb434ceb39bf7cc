"""Authentication and authorization end to end against the real server."""

from __future__ import annotations

import httpx
import pytest

from tests.server import ServerProcess
from tests.tokens import bad_tokens, make_token

INFER = "/v2/models/breast-cancer/infer"
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.2] * 30}]}


def test_missing_header_is_401_with_challenge(server: ServerProcess) -> None:
    response = httpx.post(f"{server.url}{INFER}", json=BODY)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "wrong_issuer",
        "wrong_audience",
        "bad_signature",
        "unknown_kid",
        "alg_none",
        "missing_exp",
    ],
)
def test_bad_tokens_are_401(server: ServerProcess, kind: str) -> None:
    token = bad_tokens(server.home)[kind]
    response = httpx.post(
        f"{server.url}{INFER}", json=BODY, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401, (kind, response.text)
    assert token not in response.text
    assert "Bearer" in response.headers["www-authenticate"]


def test_wrong_scope_is_403(server: ServerProcess) -> None:
    token = make_token(server.home, scope="infer:chest-xray")
    response = httpx.post(
        f"{server.url}{INFER}", json=BODY, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 403
    assert "infer:breast-cancer" in response.json()["error"]


def test_model_scope_grants_that_model_only(server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {make_token(server.home, scope='infer:breast-cancer')}"}
    assert httpx.post(f"{server.url}{INFER}", json=BODY, headers=headers).status_code == 200
    assert httpx.get(f"{server.url}/v2/models/breast-cancer", headers=headers).status_code == 200
    assert httpx.get(f"{server.url}/v2/models/chest-xray", headers=headers).status_code == 403


def test_health_stays_open_and_unknown_paths_need_a_token(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server.url}/v2/models/anything/else/here").status_code == 401
