"""Plain ASGI audit middleware: one durable record per request before its response is released.

Place it inside :class:`~phiserve.context.ContextMiddleware` and outside authentication, so
refused requests are recorded too::

    ContextMiddleware(AuditMiddleware(AuthMiddleware(app), writer))

* ``receive`` is wrapped to feed the request body into an HMAC as it streams through; the body
  is never buffered or kept. The record carries the HMAC only when the app read the whole body.
* ``send`` is wrapped: at ``http.response.start`` the record is completed (status, latency from
  ``ctx.started``, outcome from the handler or the status) and ``await writer.append`` runs
  *before* the start message is forwarded. If the record cannot be made durable the client gets
  ``503 {"error": ...}`` with ``Retry-After`` instead, and the app's body is dropped.
* A request that ends with no response (client gone, app crashed or cancelled) still gets a
  record: outcome ``aborted`` (or ``error`` with status 500 when the app raised, in which case
  the 500 is sent here, after its record).
* Open routes (``ctx.route.is_open``: health probes, metrics, the OpenAPI document) are **not**
  audited, so probes and scrapes do not flood the trail; they carry no PHI and need no identity.
  Unmatched paths *are* audited (route ``unmatched``): they are how scanners show up.

It is plain ASGI (no Starlette's base-middleware class): streaming bodies and responses pass untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from phiserve.audit.record import ABORTED_STATUS, AuditEvent
from phiserve.audit.writer import AuditWriter
from phiserve.context import RequestContext, get_context
from phiserve.errors import AuditUnavailable, send_error


class AuditMiddleware:
    """Writes one audit record per non-open HTTP request; fails closed with 503."""

    def __init__(self, app: ASGIApp, writer: AuditWriter, body_key: bytes | None = None) -> None:
        """Wrap ``app``; ``body_key`` defaults to the writer's trail body key."""
        self.app = app
        self.writer = writer
        self._body_key = body_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, recording the request before its response starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = get_context(scope)
        if ctx.route is not None and ctx.route.is_open:
            await self.app(scope, receive, send)
            return
        await _AuditedRequest(self, ctx).run(scope, receive, send)


class _AuditedRequest:
    """State of one audited request (one instance per request; no sharing across tasks)."""

    __slots__ = ("body_done", "ctx", "mac", "mw", "recorded", "refused", "started")

    def __init__(self, mw: AuditMiddleware, ctx: RequestContext) -> None:
        self.mw = mw
        self.ctx = ctx
        key = mw._body_key or mw.writer.body_key
        # Without a key (writer not yet loaded) no HMAC is computed; appending fails closed.
        self.mac = hmac.new(key, digestmod=hashlib.sha256) if key else None
        self.body_done = False
        self.recorded = False  # an append was attempted (durable or refused)
        self.refused = False  # the append failed: the 503 was sent, drop the app's messages
        self.started = False  # a response start went out to the client

    def _body_hmac(self) -> str | None:
        if self.mac is None or not self.body_done:
            return None  # the app did not read the whole body: a prefix hash would mislead
        return self.mac.hexdigest()

    async def _record(self, status: int, outcome: str | None = None) -> None:
        """Append the record; raises :class:`AuditUnavailable` if it cannot be made durable."""
        self.recorded = True
        self.ctx.body_hmac = body_hmac = self._body_hmac()
        event = AuditEvent.from_context(self.ctx, status=status, body_hmac=body_hmac,
                                        outcome=outcome)  # fmt: skip
        # If the request task is cancelled meanwhile, the queued record is written all the same.
        await self.mw.writer.append(event)

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def audited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                if self.mac is not None and chunk:
                    self.mac.update(chunk)
                if not message.get("more_body", False):
                    self.body_done = True
            return message

        async def audited_send(message: Message) -> None:
            if self.refused:
                return
            if message["type"] == "http.response.start" and not self.recorded:
                try:
                    await self._record(int(message["status"]))
                except AuditUnavailable as exc:
                    self.refused = True
                    self.started = True
                    await send_error(send, exc)
                    return
                self.started = True
            await send(message)

        try:
            await self.mw.app(scope, audited_receive, audited_send)
        except Exception as exc:
            if self.started:
                raise
            await self._fail_without_response(send, exc)
            raise
        except BaseException:  # cancelled: the response will never be sent
            if not self.recorded:
                await self._record_quietly(ABORTED_STATUS, "aborted")
            raise
        if not self.recorded:
            # The app returned without a response (e.g. the client disconnected).
            await self._record_quietly(ABORTED_STATUS, "aborted")

    async def _fail_without_response(self, send: Send, exc: Exception) -> None:
        # The app raised before responding: record a 500, then send it (a 503 if unrecordable).
        error: BaseException = exc
        try:
            await self._record(500, "error")
        except AuditUnavailable as refused:
            error = refused
        self.started = True
        await send_error(send, error)

    async def _record_quietly(self, status: int, outcome: str) -> None:
        # No response follows, so an unavailable sink has nobody to tell; the writer logs it.
        with contextlib.suppress(AuditUnavailable):
            await self._record(status, outcome)
