"""Errors on FHIR routes as OperationOutcome resources: the one place they are mapped.

Handlers on FHIR routes raise phiserve's typed errors like every other handler, and the layers in
front of them (authentication, the router) answer with the V2 error body; this layer, placed just
outside authentication, turns those answers on FHIR routes into an ``OperationOutcome``
(``application/fhir+json``) with the same status and headers (``WWW-Authenticate``,
``Retry-After``) and the error message (written by our code, never echoing input) as its
diagnostics. Successful responses pass through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from phiserve.context import get_context

FHIR_JSON: Final = b"application/fhir+json"
# HTTP status -> OperationOutcome issue type (http://hl7.org/fhir/issue-type).
_ISSUE_TYPES: Final = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    413: "too-costly",
    422: "processing",
    429: "throttled",
    503: "transient",
    504: "timeout",
}


def operation_outcome(status: int, message: str) -> dict[str, Any]:
    """An OperationOutcome with one error issue for an HTTP error ``status``."""
    issue = {
        "severity": "error" if status < 500 else "fatal",
        "code": _ISSUE_TYPES.get(status, "exception"),
        "diagnostics": message,
    }
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class OperationOutcomeLayer:
    """Rewrites V2 error responses on the named routes into OperationOutcome resources."""

    def __init__(self, app: ASGIApp, routes: Collection[str]) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass through, holding back an error response on a FHIR route to rewrite it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = get_context(scope).route
        if route is None or route.name not in self.routes:
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []

        async def send_outcome(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and _is_error(message):
                held = message
                return
            if held is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                await _send_outcome(send, held, b"".join(chunks))

        await self.app(scope, receive, send_outcome)


def _is_error(start: Message) -> bool:
    types = [v for k, v in start.get("headers", ()) if k == b"content-type"]
    return start["status"] >= 400 and types == [b"application/json"]


async def _send_outcome(send: Send, start: Message, body: bytes) -> None:
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = "request failed"
    status = start["status"]
    out = json.dumps(operation_outcome(status, message), separators=(",", ":")).encode()
    headers = [
        (k, v) for k, v in start.get("headers", ()) if k not in (b"content-type", b"content-length")
    ]
    headers += [(b"content-type", FHIR_JSON), (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": out})
