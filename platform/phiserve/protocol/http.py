"""The Open Inference Protocol over HTTP: V2 route templates and thin handlers on the data plane.

The route was matched once by :class:`phiserve.context.ContextMiddleware`; a handler reads the
body within the size limit, decodes it (:mod:`phiserve.protocol.codecs`), calls the data plane
and writes the response. Errors propagate to :class:`phiserve.http.routing.Router`, the one
place they become responses.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Final

from starlette.types import Receive, Scope, Send

from phiserve import telemetry
from phiserve.context import get_context
from phiserve.dataplane import DataPlane
from phiserve.errors import BadRequest
from phiserve.http.io import JSON, header, read_body, send_json, send_response
from phiserve.http.routing import OPEN, Handler, RouteKind, RouteSpec
from phiserve.protocol.codecs import HEADER_LENGTH, decode_request, encode_response

_OCTETS: Final = (b"content-type", b"application/octet-stream")
_HEADER_LENGTH: Final = HEADER_LENGTH.encode()

_MODEL: Final = "/v2/models/{model}"
_VERSION: Final = "/v2/models/{model}/versions/{version}"

ROUTES: Final = (
    RouteSpec("health_live", "GET", "/v2/health/live", RouteKind.HEALTH, OPEN),
    RouteSpec("health_ready", "GET", "/v2/health/ready", RouteKind.HEALTH, OPEN),
    RouteSpec("openapi", "GET", "/v2/openapi.json", RouteKind.DOCS, OPEN),
    RouteSpec("server_metadata", "GET", "/v2", RouteKind.METADATA),
    *(
        spec
        for base in (_MODEL, _VERSION)
        for spec in (
            RouteSpec("model_metadata", "GET", base, RouteKind.METADATA),
            RouteSpec("model_ready", "GET", f"{base}/ready", RouteKind.METADATA),
            RouteSpec("infer", "POST", f"{base}/infer", RouteKind.INFER),
        )
    ),
)


class V2Handlers:
    """The V2 handlers, by route name (see :data:`ROUTES`)."""

    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self.dataplane = dataplane
        self.max_request_bytes = max_request_bytes
        self._openapi_body = (files("phiserve.protocol") / "openapi.json").read_bytes()

    def handlers(self) -> dict[str, Handler]:
        """Route name -> handler."""
        return {
            "health_live": self.live,
            "health_ready": self.ready,
            "openapi": self.openapi,
            "server_metadata": self.server_metadata,
            "model_metadata": self.model_metadata,
            "model_ready": self.model_ready,
            "infer": self.infer,
        }

    async def live(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 while the process runs."""
        await send_json(send, 200, {"live": True})

    async def ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 once every version is loaded and every dependency works; 503 with causes."""
        body = self.dataplane.readiness()
        await send_json(send, 200 if body["ready"] else 503, body)

    async def openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The OpenAPI description of these routes."""
        await send_response(send, 200, self._openapi_body, [JSON])

    async def server_metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Server name, version, extensions."""
        await send_json(send, 200, self.dataplane.server_metadata())

    async def model_metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A version's signature."""
        doc = self.dataplane.model_metadata(self.dataplane.resolve_for(get_context(scope)))
        get_context(scope).outcome = "ok"  # before the response starts: the audit reads it then
        await send_json(send, 200, doc)

    async def model_ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Whether one version takes requests."""
        model = self.dataplane.resolve_for(get_context(scope))
        ready = self.dataplane.model_ready(model)
        doc = {"name": model.name, "version": str(model.version), "ready": ready}
        get_context(scope).outcome = "ok" if ready else "overloaded"
        await send_json(send, 200 if ready else 503, doc)

    async def infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Decode (JSON or binary tensors), infer, encode."""
        ctx = get_context(scope)
        model = self.dataplane.resolve_for(ctx)
        body = await read_body(scope, receive, self.max_request_bytes)
        header_length = None
        if (raw := header(scope, _HEADER_LENGTH)) is not None:
            if not raw.isdigit():
                raise BadRequest("Inference-Header-Content-Length is not a number")
            header_length = int(raw)
        with telemetry.child_span(telemetry.SPAN_DECODE):
            request = decode_request(body, header_length, self.max_request_bytes)
        response = await self.dataplane.infer(model, request)
        with telemetry.child_span(telemetry.SPAN_ENCODE):
            out, out_header_length = encode_response(response)
        ctx.batch_size = response.batch_size
        headers = [JSON] if out_header_length is None else [_OCTETS]
        if out_header_length is not None:
            headers.append((_HEADER_LENGTH, str(out_header_length).encode()))
        ctx.outcome = "ok"
        await send_response(send, 200, out, headers)
