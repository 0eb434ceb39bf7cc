"""Typed errors of phiserve and the one place that turns them into HTTP responses.

Every error class carries its HTTP status at class level (BentoML's ``exceptions.py`` pattern).
Messages are written by our code from names, shapes and causes: they never echo request bodies,
headers, tokens or tensor values, so they are safe to log, trace and return.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from starlette.types import Send


class PhiserveError(Exception):
    """Base of every error that phiserve raises on purpose."""

    status: ClassVar[int] = 500
    headers: dict[str, str]

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


# --- configuration, keys and the model repository (raised at start-up and by the CLI) ---------
class ConfigurationError(PhiserveError):
    """Settings or files that cannot work together."""


class KeyProviderError(PhiserveError):
    """The key provider is unreachable, refuses, or the key is missing."""

    status = 503


class IntegrityError(PhiserveError):
    """Ciphertext, manifest or digest failed authentication: wrong key or tampering."""


class ModelLoadError(PhiserveError):
    """A model version could not be decrypted, verified or loaded."""

    status = 503


# --- request errors ----------------------------------------------------------------------------
class BadRequest(PhiserveError):
    """The request is malformed or does not match the model's signature."""

    status = 400


class Unauthorized(PhiserveError):
    """No valid credentials: 401 with a WWW-Authenticate challenge."""

    status = 401


class Forbidden(PhiserveError):
    """Valid credentials without the scope this route needs."""

    status = 403


class NotFound(PhiserveError):
    """Unknown model, version or route."""

    status = 404


class MethodNotAllowed(PhiserveError):
    """The route exists but not for this HTTP method."""

    status = 405


class Conflict(PhiserveError):
    """The request conflicts with what the server already holds (e.g. a second outcome)."""

    status = 409


class PreconditionFailed(PhiserveError):
    """Data the call needs is neither in the request nor obtainable (CDS Hooks: missing prefetch
    and no FHIR server to fetch it from, or that server failed)."""

    status = 412


class PayloadTooLarge(PhiserveError):
    """The body exceeds the configured request size limit."""

    status = 413


class UnsupportedMediaType(PhiserveError):
    """The body's media type, or an encoding inside it (a DICOM transfer syntax), is not accepted."""

    status = 415


class Unprocessable(PhiserveError):
    """Well-formed input the model cannot use as it stands (a FHIR unit it cannot convert, a
    DICOM modality it was not made for)."""

    status = 422


class Overloaded(PhiserveError):
    """The queue is full or the server is draining; the client should retry later."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReady(PhiserveError):
    """A model or the server is not ready to serve."""

    status = 503


class DeadlineExceeded(PhiserveError):
    """The request did not finish within the per-request deadline."""

    status = 504


class AuditUnavailable(PhiserveError):
    """The audit sink cannot make the record durable: requests fail closed."""

    status = 503

    def __init__(self, message: str = "audit trail unavailable; request refused") -> None:
        super().__init__(message, headers={"Retry-After": "5"})


# --- the one place that turns errors into HTTP responses ---------------------------------------
def error_body(exc: BaseException) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and V2 error body for any exception; unknown ones become an opaque 500."""
    if isinstance(exc, PhiserveError):
        status, headers, message = exc.status, exc.headers, exc.message
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": 'Bearer realm="phiserve"', **headers}
    else:
        # A real bug: its message may hold anything, so it is neither returned nor echoed.
        status, headers, message = 500, {}, "internal error"
    body = json.dumps({"error": message}).encode()
    return status, headers, body


async def send_error(send: Send, exc: BaseException) -> None:
    """Send ``exc`` as a complete V2 error response on an ASGI ``send`` channel."""
    status, headers, body = error_body(exc)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
