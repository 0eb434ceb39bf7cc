"""Every path the server answers goes through phiserve's stack, or does not exist.

The walk covers phiserve's own route table and every route BentoML would generate for the
service (read from BentoML's app for this service, so a new BentoML route is walked too).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from starlette.routing import Mount

from phiserve.app import build_platform
from phiserve.audit import read_trail
from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from phiserve.http.routing import RouteSpec
from phiserve.security.cds_client import CDS_CLIENT
from phiserve.service import Phiserve
from tests.cds.clients import spec_ehr
from tests.routes import TABLE
from tests.server import ServerProcess, run_cli
from tests.tokens import make_token

SAMPLE_PARAMS = {"{model}": "breast-cancer", "{version}": "1"}


def _concrete(template: str) -> str:
    parts = template.split("/")
    return "/".join(SAMPLE_PARAMS.get(p, "x") if p.startswith("{") else p for p in parts)


def _bentoml_paths() -> list[str]:
    paths = []
    for route in Phiserve.to_asgi().routes:
        path = route.path.rstrip("/") or "/"
        paths.append(f"{path}/index.html" if isinstance(route, Mount) else path)
    return paths


def _stack_headers(response: httpx.Response) -> None:
    # x-request-id comes from the context layer, x-trace-id from the telemetry layer.
    assert response.headers.get("x-request-id"), response.request.url
    assert len(response.headers.get("x-trace-id", "")) == 32, response.request.url


def _audited_routes(home: Path) -> list[str]:
    settings = Settings(home=home)
    report, records = read_trail(
        settings.audit_path, key_provider_from_settings(settings, purpose="audit")
    )
    assert report.ok, report.problem
    return [r["route"] for r in records]


def test_bentoml_generated_routes_do_not_exist(server: ServerProcess) -> None:
    paths = _bentoml_paths()
    assert {"/livez", "/readyz", "/schema.json", "/docs.json", "/"} <= set(paths)
    before = len(_audited_routes(server.home))
    for path in paths:
        for method in ("GET", "HEAD", "POST"):
            anonymous = httpx.request(method, f"{server.url}{path}")
            _stack_headers(anonymous)
            assert anonymous.status_code == 401, (method, path)  # authentication ran first
            signed = httpx.request(method, f"{server.url}{path}", headers=server.auth)
            _stack_headers(signed)
            assert signed.status_code == 404, (method, path)
            if method != "HEAD":
                assert signed.json() == {"error": "no such route"}
    routes = _audited_routes(server.home)[before:]
    assert routes == ["unmatched"] * (len(paths) * 3 * 2)


def _server_routes(server: ServerProcess) -> list:
    """The route table of the running server, composed from its own settings."""
    settings = Settings(home=server.home)
    return list(build_platform(settings).routes.specs)


def test_every_phiserve_route_passes_the_stack(server: ServerProcess) -> None:
    specs = _server_routes(server)
    assert {s.template for s in TABLE.specs} <= {s.template for s in specs}
    everything = {"Authorization": f"Bearer {make_token(server.home, scope='emergency:access')}"}
    for spec in specs:
        url = f"{server.url}{_concrete(spec.template)}"

        def credentials(url: str, spec: RouteSpec = spec) -> dict[str, str]:
            # CDS Hooks routes take the trusted EHR's JWT for the exact URL, not a bearer token.
            return spec_ehr().auth(url) if spec.auth == CDS_CLIENT else everything

        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.1] * 30}]
        }
        kwargs = {"json": body} if spec.method == "POST" else {}
        anonymous = httpx.request(spec.method, url, **kwargs)
        _stack_headers(anonymous)
        if spec.auth == "open":
            assert anonymous.status_code == 200, spec.template
        else:
            assert anonymous.status_code == 401, spec.template
            # Past authentication and authorization, the route's own handler answers.
            signed = httpx.request(spec.method, url, headers=credentials(url), **kwargs)
            _stack_headers(signed)
            assert signed.status_code not in (401, 403, 405), (spec.template, signed.text)
            assert signed.json() != {"error": "no such route"}, spec.template
        refused = httpx.request("DELETE", url, headers=credentials(url))
        _stack_headers(refused)
        assert refused.status_code == 405, spec.template
    # The V2 routes answer 200 with a plain infer-and-metadata token and sample values.
    for spec in TABLE.specs:
        url = f"{server.url}{_concrete(spec.template)}"
        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.1] * 30}]
        }
        kwargs = {"json": body} if spec.method == "POST" else {}
        headers = {} if spec.auth == "open" else server.auth
        assert httpx.request(spec.method, url, headers=headers, **kwargs).status_code == 200


def test_websockets_are_refused(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /v2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 403"), reply[:64]


def _read_response(sock: socket.socket, buffer: bytes) -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 response (Content-Length framed) and what is left in the buffer."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int({k.lower(): v for k, v in headers.items()}["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        rest += chunk
    return int(lines[0].split()[1]), rest[:length], rest[length:]


@pytest.mark.parametrize(
    "hostile",
    [b"[" * 100_000, b'{"inputs": ' + b"[" * 50_000, b'{"inputs": [{"name": ' + b"{" * 20_000],
)
def test_hostile_json_is_a_400_and_the_connection_stays_open(
    server: ServerProcess, hostile: bytes
) -> None:
    good = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": [0.2] * 30}]}
    ).encode()
    auth = f"Authorization: Bearer {server.token}\r\n".encode()

    def request(body: bytes) -> bytes:
        return (
            b"POST /v2/models/breast-cancer/infer HTTP/1.1\r\nHost: x\r\n" + auth
            + b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request(hostile))
        status, body, rest = _read_response(sock, b"")
        assert status == 400 and b"JSON" in body
        sock.sendall(request(good))
        status, body, _ = _read_response(sock, rest)
        assert status == 200 and b"probabilities" in body
    assert "RecursionError" not in server.log() and "Traceback" not in server.log()


def test_models_verify_notices_an_edited_model_card(home: Path) -> None:
    assert run_cli(home, "models", "verify").returncode == 0
    card = Settings(home=home).repository_dir / "breast-cancer" / "1" / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\nThis model is approved for diagnosis.\n")
    result = run_cli(home, "models", "verify", check=False)
    assert result.returncode == 1
    assert "MODEL_CARD.md differs from the card in the authenticated manifest" in result.stdout
    assert "2 of 3 versions verified" in result.stdout
