"""Thin HTTP routing of the Open Inference Protocol onto the data plane, as a plain ASGI app.

The route was matched once by :class:`phiserve.context.ContextMiddleware`; this app reads the
body within the size limit, calls the data plane and writes the response. Every error goes
through :func:`phiserve.errors.send_error`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from phiserve import telemetry
from phiserve.context import get_context, outcome_for_status
from phiserve.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PhiserveError,
    send_error,
)
from phiserve.protocol.codecs import HEADER_LENGTH, decode_request
from phiserve.protocol.dataplane import DataPlane, LoadedVersion

_JSON = (b"content-type", b"application/json")
_OCTETS = (b"content-type", b"application/octet-stream")
_HEADER_LENGTH = HEADER_LENGTH.encode()


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; 413 as soon as it passes ``limit`` (before buffering more)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise BadRequest("Content-Length is not a number")
            if int(value) > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Send a complete response."""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, doc: Any) -> None:
    """Send ``doc`` as JSON."""
    await send_response(send, status, json.dumps(doc, separators=(",", ":")).encode(), [_JSON])


Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class V2App:
    """ASGI app answering the V2 routes (and /metrics through ``metrics_app``)."""

    def __init__(self, dataplane: DataPlane, max_request_bytes: int, metrics_app: ASGIApp) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes
        self.metrics_app = metrics_app
        self._handlers: dict[str, Handler] = {
            "health_live": self._live,
            "health_ready": self._ready,
            "server_metadata": self._server_metadata,
            "model_metadata": self._model_metadata,
            "model_ready": self._model_ready,
            "infer": self._infer,
            "metrics": self.metrics_app,
            "openapi": self._openapi,
        }
        self._openapi_body = (files("phiserve.protocol") / "openapi.json").read_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one HTTP request."""
        ctx = get_context(scope)
        try:
            route = ctx.route
            if route is None:
                raise NotFound("no such route")
            if scope["method"] != route.method:
                raise MethodNotAllowed(f"{route.template} accepts {route.method} only")
            await self._handlers[route.name](scope, receive, send)
        except PhiserveError as exc:
            ctx.outcome, ctx.error_type = outcome_for_status(exc.status), type(exc).__name__
            await send_error(send, exc)
        except Exception as exc:  # a real bug: opaque 500, details only in the server log
            ctx.outcome, ctx.error_type = "error", type(exc).__name__
            await send_error(send, exc)
            raise

    async def _live(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, {"live": True})

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.dataplane.readiness()
        await send_json(send, 200 if body["ready"] else 503, body)

    async def _openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_response(send, 200, self._openapi_body, [_JSON])

    async def _server_metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_json(send, 200, self.dataplane.server_metadata())

    def _resolve(self, scope: Scope) -> LoadedVersion:
        ctx = get_context(scope)
        route = ctx.route
        lv = self.dataplane.resolve(route.model, route.version, route.bad_version)
        ctx.model, ctx.version = lv.manifest.name, lv.manifest.version
        return lv

    async def _model_metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        doc = self.dataplane.model_metadata(self._resolve(scope))
        get_context(scope).outcome = "ok"  # before the response starts: the audit reads it then
        await send_json(send, 200, doc)

    async def _model_ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        lv = self._resolve(scope)
        ready = not self.dataplane.draining
        doc = {"name": lv.manifest.name, "version": str(lv.manifest.version), "ready": ready}
        get_context(scope).outcome = "ok" if ready else "overloaded"
        await send_json(send, 200 if ready else 503, doc)

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = get_context(scope)
        lv = self._resolve(scope)
        body = await read_body(scope, receive, self.max_request_bytes)
        header_length = None
        for name, value in scope["headers"]:
            if name == _HEADER_LENGTH:
                if not value.isdigit():
                    raise BadRequest("Inference-Header-Content-Length is not a number")
                header_length = int(value)
        with telemetry.child_span(telemetry.SPAN_DECODE):
            request = decode_request(body, header_length, self.max_request_bytes)
        result = await self.dataplane.infer(lv, request)
        ctx.batch_size = result.timings.batch_size
        headers = [_JSON] if result.header_length is None else [_OCTETS]
        if result.header_length is not None:
            headers.append((_HEADER_LENGTH, str(result.header_length).encode()))
        ctx.outcome = "ok"
        await send_response(send, 200, result.body, headers)
