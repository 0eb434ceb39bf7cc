"""Preflight and discovery: is the server there, ready, and does it accept the token?

Runs before any load (on the master or a local runner, from locust's ``init`` event) so that a
wrong host or a wrong token ends the run at once with one clear sentence instead of thousands of
failed requests or a traceback. Signatures come from ``GET /v2/models/{m}``; phiserve has no
repository index endpoint, so the model *names* come from ``--models``.

Uses ``urllib`` (standard library) so that discovery requests never appear in locust's stats.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from phiserve_load.auth import TokenSource


class PreflightError(RuntimeError):
    """The run cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model signature."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """What ``GET /v2/models/{m}[/versions/{v}]`` says about one model version."""

    name: str
    version: str  # "" for the unversioned route (the server's default version)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0  # 0: unknown
    parameters: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def label(self) -> str:
        """``name@version`` (``name@default`` for the unversioned route)."""
        return f"{self.name}@{self.version or 'default'}"


@dataclass(frozen=True)
class ModelRequest:
    """One entry of ``--models``: a name and which versions to address."""

    name: str
    versions: tuple[str, ...] = ()  # () = every live version; ("",) = the unversioned route


def parse_models(text: str) -> list[ModelRequest]:
    """``"breast-cancer,chest-xray@1+2,other@default"`` -> model requests."""
    out: list[ModelRequest] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, versions = part.partition("@")
        if not name:
            raise PreflightError(f"--models: empty model name in {part!r}")
        chosen: tuple[str, ...] = ()
        if versions and versions != "all":
            chosen = tuple(
                "" if v == "default" else v for v in (x.strip() for x in versions.split("+")) if v
            )
            bad = [v for v in chosen if v and not v.isdigit()]
            if bad:
                raise PreflightError(f"--models: versions are positive integers, got {bad}")
        out.append(ModelRequest(name, chosen))
    if not out:
        raise PreflightError("--models: name at least one model, e.g. --models breast-cancer")
    return out


class Client:
    """A minimal JSON-over-HTTP client for preflight, discovery and scrapes."""

    def __init__(self, host: str, tokens: TokenSource | None, *, insecure: bool = False) -> None:
        if not host:
            raise PreflightError("no target: pass --host (e.g. --host http://127.0.0.1:3000)")
        parsed = urllib.parse.urlsplit(host)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise PreflightError(f"--host {host!r}: expected http(s)://host:port")
        self.host = host.rstrip("/")
        self.tokens = tokens
        self.context: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self.context = ssl.create_default_context()
            if insecure:
                # --insecure is an explicit choice for self-signed dev certificates.
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; returns (status, headers, body). Network errors -> PreflightError."""
        url = self.host + path
        hdrs = dict(headers or {})
        if auth and self.tokens is not None:
            hdrs.update(self.tokens.headers())
        req = urllib.request.Request(url, data=body, method=method, headers=hdrs)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.context) as resp:  # noqa: S310
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PreflightError(
                f"cannot reach {self.host} ({reason}): is the server running and is --host "
                "right? (start one with `make serve`)"
            ) from None


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)
    except ValueError:
        return body[:200].decode(errors="replace")


def check_ready(client: Client) -> None:
    """The server answers and is ready (every model loaded)."""
    status, _, body = client.request("GET", "/v2/health/ready", auth=False)
    if status != 200:
        raise PreflightError(
            f"{client.host} is not ready (GET /v2/health/ready: {status} {_error_text(body)})"
        )


def auth_problem(status: int, body: bytes, tokens: TokenSource | None, what: str) -> str | None:
    """A sentence for a 401/403 answer, naming the token's origin (never its value)."""
    if status == 401:
        origin = tokens.origin if tokens else "no token"
        if origin == "no token":
            return (
                f"{what}: the server wants a bearer token (401: {_error_text(body)}); set "
                "PHISERVE_TOKEN or --token-file (dev: `phiserve token issue --subject loadtest "
                "--scope 'infer:* metadata:read'`)"
            )
        return f"{what}: the token from {origin} was refused (401: {_error_text(body)})"
    if status == 403:
        return (
            f"{what}: the token lacks a scope (403: {_error_text(body)}); it needs "
            "'metadata:read' and 'infer:<model>' (or 'infer:*')"
        )
    return None


def _spec(doc: dict[str, Any]) -> TensorSpec:
    return TensorSpec(str(doc["name"]), str(doc["datatype"]), tuple(int(d) for d in doc["shape"]))


def signature_from_metadata(doc: dict[str, Any], version: str) -> ModelSignature:
    """Build a signature from a V2 model metadata document."""
    params = doc.get("parameters") or {}
    try:
        max_batch = int(params.get("max_batch_size") or 0)
    except (TypeError, ValueError):
        max_batch = 0
    return ModelSignature(
        name=str(doc["name"]),
        version=version,
        inputs=tuple(_spec(t) for t in doc.get("inputs", [])),
        outputs=tuple(_spec(t) for t in doc.get("outputs", [])),
        max_batch_size=max_batch,
        parameters=dict(params),
    )


def fetch_metadata(client: Client, name: str, version: str = "") -> dict[str, Any]:
    """``GET /v2/models/{name}[/versions/{version}]``, with clear errors."""
    quoted = urllib.parse.quote(name, safe="")
    path = f"/v2/models/{quoted}" + (f"/versions/{version}" if version else "")
    status, _, body = client.request("GET", path)
    problem = auth_problem(status, body, client.tokens, f"GET {path}")
    if problem:
        raise PreflightError(problem)
    if status == 404:
        what = f"model {name!r}" + (f" version {version}" if version else "")
        raise PreflightError(f"{what} is not served by {client.host} (404: {_error_text(body)})")
    if status != 200:
        raise PreflightError(f"GET {path}: {status} {_error_text(body)}")
    try:
        return json.loads(body)
    except ValueError:
        raise PreflightError(f"GET {path}: the answer is not JSON") from None


def discover(client: Client, requests: list[ModelRequest]) -> list[ModelSignature]:
    """Signatures of every requested model version, in ``--models`` order."""
    signatures: list[ModelSignature] = []
    for req in requests:
        meta = fetch_metadata(client, req.name)
        live = [str(v) for v in meta.get("versions", [])] or [""]
        versions = req.versions or tuple(live)
        for version in versions:
            if version and version not in live:
                raise PreflightError(
                    f"model {req.name!r} has no live version {version} (live: {', '.join(live)})"
                )
            doc = fetch_metadata(client, req.name, version) if version else meta
            sig = signature_from_metadata(doc, version)
            if not sig.inputs:
                raise PreflightError(f"model {sig.label} declares no inputs; nothing to send")
            signatures.append(sig)
    return signatures
