"""Fixtures for the key-provider tests: real HTTP servers on 127.0.0.1 standing in for KMS and
Vault, a port nobody listens on, and a port that accepts connections but never answers."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.crypto.vault_transit_stub import VaultTransitStub

CONTEXT = {"model": "breast-cancer", "version": "1", "digest": "sha256:" + "ab" * 32}


@pytest.fixture
def context() -> dict[str, str]:
    """A typical encryption context: model name, version and digest."""
    return dict(CONTEXT)


@pytest.fixture
def kek_file(tmp_path: Path) -> Path:
    """Where a local key file goes; its folder does not exist yet."""
    return tmp_path / "keys" / "kek.json"


# --- ports that fail ---------------------------------------------------------------------------
@pytest.fixture
def dead_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def hung_url() -> Iterator[str]:
    """A listening socket that never accepts or answers: requests hit the read timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# --- AWS KMS: moto's server over real HTTP -----------------------------------------------------
class _KmsKeyStateMiddleware:
    """Refuses Encrypt/Decrypt/ReEncrypt with a disabled or pending-deletion key, as KMS does.

    moto (5.x) records key state but still encrypts and decrypts with a disabled key; this WSGI
    layer checks the key that moto reports in its answer and replaces the answer with KMS's
    ``DisabledException`` / ``KMSInvalidStateException``, so the real client sees real errors.
    It also lets DisableKey, EnableKey and ScheduleKeyDeletion take a key ARN, as KMS does.
    """

    _TARGETS = frozenset({"TrentService.Encrypt", "TrentService.Decrypt", "TrentService.ReEncrypt"})

    _BY_KEY_ID = frozenset(
        {"TrentService.DisableKey", "TrentService.EnableKey", "TrentService.ScheduleKeyDeletion"}
    )

    def __init__(self, app: Any) -> None:
        self.app = app

    @staticmethod
    def _body(environ: dict[str, Any]) -> bytes:
        return bytes(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))

    @staticmethod
    def _set_body(environ: dict[str, Any], body: bytes) -> None:
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        from werkzeug.wrappers import Response

        target = environ.get("HTTP_X_AMZ_TARGET")
        if target in self._BY_KEY_ID:
            # moto takes only a bare key id for these; KMS also takes the key ARN.
            request = json.loads(self._body(environ) or b"{}")
            request["KeyId"] = str(request.get("KeyId", "")).rsplit(":key/", 1)[-1]
            self._set_body(environ, json.dumps(request).encode())
        if target not in self._TARGETS:
            return self.app(environ, start_response)
        self._set_body(environ, self._body(environ))
        response = Response.from_app(self.app, environ)
        if response.status_code == 200:
            answer = json.loads(response.get_data())
            for arn in (answer.get("SourceKeyId"), answer.get("KeyId")):
                state = _moto_key_state(arn) if arn else "Enabled"
                if state == "Disabled":
                    response = _kms_error("DisabledException", f"{arn} is disabled.")
                elif state != "Enabled":
                    response = _kms_error("KMSInvalidStateException", f"{arn} is {state}.")
        return response(environ, start_response)


def _moto_key_state(arn: str) -> str:
    from moto.kms.models import kms_backends

    _, _, _, region, account, resource = arn.split(":", 5)
    return str(kms_backends[account][region].keys[resource.split("/", 1)[1]].key_state)


def _kms_error(code: str, message: str) -> Any:
    from werkzeug.wrappers import Response

    body = json.dumps({"__type": code, "message": message})
    return Response(body, status=400, content_type="application/x-amz-json-1.1")


@pytest.fixture(scope="session")
def kms_server() -> Iterator[Any]:
    """moto's ThreadedMotoServer on 127.0.0.1 with a free port (plus the key-state layer)."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Server(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = _KmsKeyStateMiddleware(DomainDispatcherApplication(create_backend_app))
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    server = Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials and a region; no profile, config file or instance metadata."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def kms_url(kms_server: Any, aws_env: None) -> str:
    """Endpoint URL of the moto server."""
    host, port = kms_server.get_host_and_port()
    return f"http://{host}:{port}"


@pytest.fixture
def kms_admin(kms_url: str) -> Any:
    """A plain boto3 KMS client for test set-up (creating and disabling keys)."""
    import boto3

    return boto3.client("kms", region_name="us-east-1", endpoint_url=kms_url)


# --- Vault transit: our stub over real HTTP ----------------------------------------------------
@pytest.fixture
def vault(monkeypatch: pytest.MonkeyPatch) -> Iterator[VaultTransitStub]:
    """A fresh Vault transit stub with a random token."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    with VaultTransitStub() as stub:
        yield stub
