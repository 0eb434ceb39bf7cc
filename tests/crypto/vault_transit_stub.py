"""A small Vault transit look-alike over real HTTP, for testing the real hvac client.

Implements just what phiserve uses, with Vault's paths, status codes and error texts:
``POST /v1/<mount>/encrypt/<key>`` (upserting the key, derived when a context is given),
``/decrypt/<key>``, ``/rewrap/<key>``, ``/keys/<key>`` (create, read), ``/keys/<key>/rotate`` and
``/keys/<key>/config``. Keys are versioned AES-256-GCM keys; ciphertexts are
``vault:v<N>:base64(nonce || ciphertext || tag)``; a derived key uses HKDF-SHA256 with the
context as info, as Vault does. A request without the right ``X-Vault-Token`` gets 403.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_ROUTE = re.compile(
    r"^/v1/(?P<mount>.+?)/(?:(?P<op>encrypt|decrypt|rewrap)/(?P<key>[\w.-]+)"
    r"|keys/(?P<kname>[\w.-]+)(?:/(?P<kop>rotate|config))?)$"
)


class VaultStubError(Exception):
    """An error answer: HTTP status and Vault's ``errors`` list."""

    def __init__(self, status: int, *errors: str) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = list(errors)


@dataclass
class TransitKey:
    """One transit key: its versions and policy."""

    derived: bool = False
    versions: dict[int, bytes] = field(default_factory=dict)
    created: dict[int, int] = field(default_factory=dict)
    min_decryption_version: int = 1

    def __post_init__(self) -> None:
        if not self.versions:
            self.rotate()

    @property
    def latest(self) -> int:
        """The newest version, used for encryption."""
        return max(self.versions)

    def rotate(self) -> None:
        """Add a new version."""
        version = len(self.versions) + 1
        self.versions[version] = AESGCM.generate_key(bit_length=256)
        self.created[version] = int(time.time())

    def _key(self, version: int, context: bytes | None) -> bytes:
        if self.derived:
            if not context:
                raise VaultStubError(
                    400,
                    "missing 'context' for key derivation; the key was created using a derived "
                    "key, which means additional, per-request information must be included in "
                    "order to perform operations with the key",
                )
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context)
            return hkdf.derive(self.versions[version])
        return self.versions[version]

    def encrypt(self, plaintext: bytes, context: bytes | None) -> str:
        """``vault:v<latest>:...``"""
        nonce = os.urandom(12)
        sealed = AESGCM(self._key(self.latest, context)).encrypt(nonce, plaintext, None)
        return f"vault:v{self.latest}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, ciphertext: str, context: bytes | None) -> bytes:
        """Vault's checks, in Vault's order, with Vault's messages."""
        match = re.match(r"^vault:v(\d+):(.*)$", ciphertext, re.DOTALL)
        if match is None:
            raise VaultStubError(400, "invalid ciphertext: no prefix")
        version = int(match.group(1))
        if version < self.min_decryption_version:
            raise VaultStubError(
                400, "ciphertext or signature version is disallowed by policy (too old)"
            )
        if version not in self.versions:
            raise VaultStubError(400, "invalid key version")
        try:
            raw = base64.b64decode(match.group(2), validate=True)
        except binascii.Error:
            raise VaultStubError(400, "invalid ciphertext: could not decode base64") from None
        try:
            return AESGCM(self._key(version, context)).decrypt(raw[:12], raw[12:], None)
        except (InvalidTag, ValueError):
            raise VaultStubError(400, "cipher: message authentication failed") from None

    def describe(self, name: str) -> dict[str, Any]:
        """What ``GET keys/<name>`` answers (versions below min_decryption_version hidden)."""
        return {
            "name": name,
            "type": "aes256-gcm96",
            "derived": self.derived,
            "kdf": "hkdf_sha256" if self.derived else "",
            "latest_version": self.latest,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": 0,
            "deletion_allowed": False,
            "exportable": False,
            "supports_encryption": True,
            "supports_decryption": True,
            "keys": {
                str(v): t for v, t in self.created.items() if v >= self.min_decryption_version
            },
        }


class VaultTransitStub:
    """A threaded HTTP server on 127.0.0.1 with a random free port; use as a context manager."""

    def __init__(self, token: str | None = None, *, legacy_rotate: bool = False) -> None:
        """``legacy_rotate``: answer ``keys/<key>/rotate`` with 204, as Vault before 1.14 does."""
        self.token = token or f"hvs.{secrets.token_urlsafe(24)}"
        # A sealed Vault answers every call with 503 "Vault is sealed": the provider is down.
        self.sealed = False
        self.legacy_rotate = legacy_rotate
        self.namespaces: list[str | None] = []
        self.mounts: dict[str, dict[str, TransitKey]] = {"transit": {}}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A short poll interval keeps stop() (and each test's teardown) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base address, e.g. ``http://127.0.0.1:54321``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> VaultTransitStub:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop as a crash would: refuse new connections and cut the open (keep-alive) ones."""
        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._connections):
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def __enter__(self) -> VaultTransitStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def create_key(self, name: str, *, mount: str = "transit", derived: bool = False) -> TransitKey:
        """Create a key directly (test set-up)."""
        with self._lock:
            key = self.mounts.setdefault(mount, {}).setdefault(name, TransitKey(derived=derived))
        return key

    # --- request handling ------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

            def setup(self) -> None:
                super().setup()
                stub._connections.add(self.connection)

            def finish(self) -> None:
                stub._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def do_PUT(self) -> None:
                self._dispatch("POST")

            def _dispatch(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    if stub.sealed:
                        raise VaultStubError(503, "Vault is sealed")
                    if not secrets.compare_digest(
                        self.headers.get("X-Vault-Token", ""), stub.token
                    ):
                        raise VaultStubError(403, "permission denied")
                    try:
                        body = json.loads(raw) if raw else {}
                    except ValueError:
                        raise VaultStubError(400, "failed to parse JSON input") from None
                    stub.requests.append((method, self.path))
                    stub.namespaces.append(self.headers.get("X-Vault-Namespace"))
                    status, answer = stub._route(method, self.path.split("?")[0], body)
                except VaultStubError as exc:
                    status, answer = exc.status, {"errors": exc.errors}
                payload = b"" if status == 204 else json.dumps(answer).encode()
                self.send_response(status)
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler

    def _route(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        match = _ROUTE.match(path)
        if match is None or match["mount"] not in self.mounts:
            raise VaultStubError(404, f"no handler for route {path!r}")
        keys = self.mounts[match["mount"]]
        with self._lock:
            if match["op"]:
                return 200, {"data": self._crypto(match["op"], keys, match["key"], body)}
            name, op = match["kname"], match["kop"]
            if op is None and method == "POST":
                keys.setdefault(name, TransitKey(derived=bool(body.get("derived"))))
                return 204, None
            key = keys.get(name)
            if key is None:
                raise VaultStubError(404 if method == "GET" else 400, "encryption key not found")
            if op is None:
                return 200, {"data": key.describe(name)}
            if op == "rotate":
                key.rotate()
                return (204, None) if self.legacy_rotate else (200, {"data": key.describe(name)})
            return self._config(key, name, body)

    def _crypto(
        self, op: str, keys: dict[str, TransitKey], name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        context = _b64(body["context"], "context") if body.get("context") else None
        key = keys.get(name)
        if key is None:
            if op != "encrypt":
                raise VaultStubError(400, "encryption key not found")
            # Vault upserts on encrypt: the new key is derived iff a context was sent.
            key = keys[name] = TransitKey(derived=context is not None)
        if op == "encrypt":
            plaintext = _b64(body.get("plaintext", ""), "plaintext")
            return {"ciphertext": key.encrypt(plaintext, context), "key_version": key.latest}
        ciphertext = str(body.get("ciphertext", ""))
        plaintext = key.decrypt(ciphertext, context)
        if op == "decrypt":
            return {"plaintext": base64.b64encode(plaintext).decode()}
        return {"ciphertext": key.encrypt(plaintext, context), "key_version": key.latest}

    def _config(self, key: TransitKey, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        if "min_decryption_version" in body:
            wanted = int(body["min_decryption_version"])
            if wanted > key.latest:
                raise VaultStubError(
                    400, "cannot set min decryption version higher than latest version"
                )
            key.min_decryption_version = max(wanted, 1)
        return 200, {"data": key.describe(name)}


def _b64(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError):
        raise VaultStubError(400, f"failed to base64-decode {name}") from None
