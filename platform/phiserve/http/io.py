"""Request bodies in, responses out: the helpers every route handler uses.

Bodies are read within a size limit (413 before buffering more than it), JSON is parsed with
nesting bounded, and responses are complete (Content-Length set) ASGI messages.
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.types import Receive, Scope, Send

from phiserve.errors import BadRequest, PayloadTooLarge

JSON: Final = (b"content-type", b"application/json")


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


def header(scope: Scope, name: bytes) -> bytes | None:
    """The value of request header ``name`` (lower-case), or ``None``."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def parse_json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    """A JSON object from ``raw``; 400 for anything else, nesting too deep included.

    The C parser bounds nesting by the interpreter's recursion limit and raises RecursionError
    past it: a client error, answered like any other malformed body (never a 500).
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"{what} is not valid JSON") from None
    except RecursionError:
        raise BadRequest(f"{what} nests JSON too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return doc


async def send_response(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Send a complete response."""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, doc: Any, content_type: bytes | None = None) -> None:
    """Send ``doc`` as JSON (``content_type`` overrides application/json, e.g. FHIR's)."""
    body = json.dumps(doc, separators=(",", ":")).encode()
    ctype = (b"content-type", content_type) if content_type else JSON
    await send_response(send, status, body, [ctype])
