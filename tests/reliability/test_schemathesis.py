"""Schemathesis against the server's own OpenAPI description, with a valid token and bad ones.

Every generated case must end in a 2xx or a 4xx with the V2 error body: never a 5xx, a hang or
a dead worker. (Cases are drawn from schemathesis' Hypothesis strategies per operation; its
pytest plugin does not run under this pytest version.)
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dicom import instances
from tests.server import ServerProcess
from tests.tokens import bad_tokens

OPEN = ("/v2/health/live", "/v2/health/ready", "/v2/openapi.json")


@st.composite
def _damaged_dicom(draw: st.DrawFn) -> bytes:
    """A real CR instance, cut short or with one byte changed."""
    data = bytearray(instances.raw(draw(st.sampled_from(instances.CR_FILES[:3]))))
    at = draw(st.integers(0, len(data) - 1))
    if draw(st.booleans()):
        return bytes(data[:at])
    data[at] = draw(st.integers(0, 255))
    return bytes(data)


# The DICOM route's bodies (schemathesis has no serializer for them): noise, a real instance,
# or a damaged one. A multipart/related body without its boundary parameter is a bad request.
_DICOM = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from([instances.raw(instances.SMALL_CR)]),
    _damaged_dicom(),
)
schemathesis.openapi.media_type("application/dicom", _DICOM)
schemathesis.openapi.media_type("multipart/related", _DICOM)


def _operations(server: ServerProcess) -> list:
    schema = schemathesis.openapi.from_url(f"{server.url}/v2/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 12  # every route under /v2 (V2 protocol, DICOM in, outcomes)
    return operations


def _fuzz_operation(
    server: ServerProcess, operation, headers: dict[str, str], examples: int, auth_fails: bool
) -> int:
    calls = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def run(case) -> None:
        nonlocal calls
        response = case.call(base_url=server.url, headers=headers, timeout=30)
        calls += 1
        assert response.status_code < 500, (
            case.method,
            case.path,
            response.status_code,
            response.text[:200],
        )
        if response.status_code >= 400:
            assert set(response.json()) == {"error"}
        if auth_fails and operation.path not in OPEN:
            assert response.status_code == 401

    run()
    return calls


def _fuzz(
    server: ServerProcess, headers: dict[str, str], examples: int, *, auth_fails: bool
) -> int:
    return sum(
        _fuzz_operation(server, op, headers, examples, auth_fails) for op in _operations(server)
    )


def test_valid_token_never_5xx(server: ServerProcess) -> None:
    calls = _fuzz(server, server.auth, 40, auth_fails=False)
    print(f"schemathesis: {calls} calls with a valid token, none answered 5xx")
    assert calls > 100


@pytest.mark.parametrize("kind", ["expired", "bad_signature", "alg_none", "wrong_audience"])
def test_bad_tokens_are_401_never_5xx(server: ServerProcess, kind: str) -> None:
    token = bad_tokens(server.home)[kind]
    calls = _fuzz(server, {"Authorization": f"Bearer {token}"}, 8, auth_fails=True)
    print(f"schemathesis: {calls} calls with a {kind} token, all 401 or open routes")
    assert calls > 20


def test_server_still_healthy_after_fuzzing(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert server.proc.poll() is None
