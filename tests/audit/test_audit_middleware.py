"""The audit middleware: a durable record before every response, fail closed, PHI-free."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from phiserve.audit import fsio
from phiserve.audit.middleware import AuditMiddleware
from phiserve.audit.writer import AuditWriter
from phiserve.context import ContextMiddleware, get_context
from tests.audit.conftest import FlakyProvider
from tests.audit.helpers import read_trail
from tests.routes import TABLE


async def tiny_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A stand-in for auth + handler: behaviour picked by the model name in the path."""
    ctx = get_context(scope)
    model = ctx.route.model if ctx.route else None
    if model == "deny":  # as the auth layer would: nothing read, 401
        ctx.outcome = "denied"
        await _respond(send, 401, b'{"error":"no token"}')
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return  # client gone: no response
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    ctx.subject = "dr-who"
    if model == "boom":
        raise RuntimeError("a bug whose message must not leak")
    if model == "hang":
        await asyncio.Event().wait()
    status = 404 if ctx.route is None else 200
    await _respond(send, status, b'{"outputs":"SECRET-RESULT %d"}' % len(body))


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def mirror() -> io.StringIO:
    """Where the writer mirrors records (stands in for stdout)."""
    return io.StringIO()


@pytest.fixture
def writer(writer_factory: Callable[..., AuditWriter], mirror: io.StringIO) -> AuditWriter:
    """A started writer that mirrors records into ``mirror``."""
    return writer_factory(mirror=mirror)


def stack(writer: AuditWriter, app: Any = tiny_app) -> ContextMiddleware:
    """The production order: context outside, audit inside it (auth would sit inside audit)."""
    return ContextMiddleware(AuditMiddleware(app, writer), TABLE, lambda: {"breast-cancer"})


def client(writer: AuditWriter) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=stack(writer), raise_app_exceptions=False,
                                    client=("10.1.2.3", 4321))  # fmt: skip
    return httpx.AsyncClient(transport=transport, base_url="http://phiserve.test")


def records(audit_dir: Path, provider: FlakyProvider) -> list[dict[str, Any]]:
    report, stored = read_trail(audit_dir, provider)
    assert report.ok, report.problem
    return stored


def test_allowed_request_is_recorded_with_the_phi_free_fields(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    body = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1.5]}]}'

    async def go() -> httpx.Response:
        async with client(writer) as c:
            return await c.post("/v2/models/breast-cancer/versions/3/infer", content=body)

    response = asyncio.run(go())
    assert response.status_code == 200
    (record,) = records(audit_dir, provider)
    assert record["request_id"] == response.headers["x-request-id"]
    assert record["route"] == "/v2/models/{model}/versions/{version}/infer"
    assert (record["model"], record["version"]) == ("breast-cancer", 3)
    assert (record["status"], record["outcome"], record["method"]) == (200, "ok", "POST")
    assert (record["subject"], record["client"]) == ("dr-who", "10.1.2.3")
    assert record["break_glass"] is False and record["latency_ms"] >= 0
    assert writer.body_key is not None
    assert record["body_hmac"] == hmac.new(writer.body_key, body, hashlib.sha256).hexdigest()


def test_refused_request_is_recorded(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    async def go() -> httpx.Response:
        async with client(writer) as c:
            return await c.post("/v2/models/deny/infer", content=b"{}")

    assert asyncio.run(go()).status_code == 401
    (record,) = records(audit_dir, provider)
    assert (record["status"], record["outcome"], record["body_hmac"]) == (401, "denied", None)


def test_unmatched_route_is_recorded_by_template_only(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    async def go() -> httpx.Response:
        async with client(writer) as c:
            return await c.get("/patients/jane-doe/records")

    assert asyncio.run(go()).status_code == 404
    (record,) = records(audit_dir, provider)
    assert (record["route"], record["outcome"]) == ("unmatched", "rejected")
    assert "jane" not in json.dumps(record)


def test_open_routes_are_not_audited(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    async def go() -> None:
        async with client(writer) as c:
            for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
                assert (await c.get(path)).status_code == 200

    asyncio.run(go())
    assert records(audit_dir, provider) == []


def test_app_crash_is_recorded_then_answered_500(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    async def go() -> httpx.Response:
        async with client(writer) as c:
            return await c.post("/v2/models/boom/infer", content=b"{}")

    response = asyncio.run(go())
    assert response.status_code == 500 and response.json() == {"error": "internal error"}
    (record,) = records(audit_dir, provider)
    assert (record["status"], record["outcome"]) == (500, "error")


def test_record_is_durable_before_the_response_starts(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    seen: list[str] = []

    async def go() -> None:
        body = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> Message:
            return body.pop(0) if body else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                request_id = dict(message["headers"])[b"x-request-id"].decode()
                stored = records(audit_dir, provider)  # read back from disk, right now
                assert stored[-1]["request_id"] == request_id
                seen.append(request_id)

        scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer",
                 "headers": [(b"x-request-id", b"req-durable-1")], "client": ("10.0.0.1", 1)}  # fmt: skip
        await stack(writer)(scope, receive, send)

    asyncio.run(go())
    assert seen == ["req-durable-1"]


def test_audit_failure_answers_503_and_drops_the_apps_body(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def enospc(fd: int, data: bytes | memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "_os_pwrite", enospc)

    async def go() -> httpx.Response:
        async with client(writer) as c:
            return await c.post("/v2/models/m/infer", content=b"{}")

    response = asyncio.run(go())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "x-request-id" in response.headers
    assert response.json() == {"error": "audit trail unavailable; request refused"}
    assert b"SECRET-RESULT" not in response.content
    monkeypatch.undo()
    assert asyncio.run(go()).status_code == 200  # the sink is back: so is service
    assert len(records(audit_dir, provider)) == 1


def test_client_disconnect_is_recorded_as_aborted(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    async def go() -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer",
                 "headers": [], "client": ("10.0.0.1", 1)}  # fmt: skip
        await stack(writer)(scope, receive, send)
        return sent

    assert asyncio.run(go()) == []
    (record,) = records(audit_dir, provider)
    assert (record["status"], record["outcome"]) == (499, "aborted")


def test_cancelled_request_is_recorded_as_aborted(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    async def go() -> None:
        received = asyncio.Event()

        async def receive() -> Message:
            received.set()
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message: Message) -> None:
            raise AssertionError("nothing may be sent")

        scope = {"type": "http", "method": "POST", "path": "/v2/models/hang/infer",
                 "headers": [], "client": ("10.0.0.1", 1)}  # fmt: skip
        task = asyncio.ensure_future(stack(writer)(scope, receive, send))
        await received.wait()  # the app has read the body: it now hangs until cancelled
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    (record,) = records(audit_dir, provider)
    assert record["outcome"] == "aborted"


def test_streamed_body_is_hashed_incrementally(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    chunks = [b"a" * 70_000, b"b" * 5, b"c" * 123_456]

    async def body() -> Any:
        for chunk in chunks:
            yield chunk

    async def go() -> httpx.Response:
        async with client(writer) as c:
            return await c.post("/v2/models/m/infer", content=body())

    response = asyncio.run(go())
    assert response.status_code == 200
    (record,) = records(audit_dir, provider)
    assert writer.body_key is not None
    expected = hmac.new(writer.body_key, b"".join(chunks), hashlib.sha256).hexdigest()
    assert record["body_hmac"] == expected


def test_stdout_mirror_carries_each_durable_record(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider, mirror: io.StringIO
) -> None:
    async def go() -> None:
        async with client(writer) as c:
            await asyncio.gather(*(c.post("/v2/models/m/infer", content=b"{}") for _ in range(10)))

    asyncio.run(go())
    lines = [json.loads(line) for line in mirror.getvalue().splitlines()]
    stored = records(audit_dir, provider)
    assert [(x["seq"], x["mac"]) for x in lines] == [(x["seq"], x["mac"]) for x in stored]
    assert all(x["log"] == "phiserve.audit" and x["stream"] == "server" for x in lines)


def test_many_concurrent_requests_each_get_one_record(
    writer: AuditWriter, audit_dir: Path, provider: FlakyProvider
) -> None:
    async def go() -> list[httpx.Response]:
        async with client(writer) as c:
            return await asyncio.gather(
                *(c.post("/v2/models/m/infer", content=b"%d" % i) for i in range(200))
            )

    responses = asyncio.run(go())
    assert all(r.status_code == 200 for r in responses)
    stored = records(audit_dir, provider)
    assert sorted(r["request_id"] for r in stored) == sorted(
        r.headers["x-request-id"] for r in responses
    )
    assert writer.stats.commits < 200
